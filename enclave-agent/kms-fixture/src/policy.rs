//! Key policies: the subset of AWS's policy language that decides who gets a data key.
//!
//! A policy is AWS's JSON (`Version`, `Statement[Sid, Effect, Principal, Action, Resource,
//! Condition]`). What is understood:
//!
//! - `Effect` `Allow`/`Deny`; an explicit Deny wins, and a request no Allow matches is denied;
//! - `Principal` `"*"`, `{"AWS": "*"}` or `{"AWS": ARN | [ARN, ...]}`, compared exactly with the
//!   caller's ARN. An account root (`arn:aws:iam::ACCOUNT:root`) delegates to IAM policies in
//!   AWS; the local KMS has none, so it grants exactly what AWS grants with no IAM policy: only
//!   requests made as the root itself;
//! - `Action` (string or list): `*` or `kms:` actions with `*`/`?` wildcards, case-insensitive;
//! - `Resource` `"*"` (a key policy's only resource);
//! - `Condition` with the operators `StringEquals` and `StringEqualsIgnoreCase` on
//!   `kms:RecipientAttestation:ImageSha384` and `kms:RecipientAttestation:PCR0`..`PCR31`,
//!   whose request values are the attested measurements in lower-case hex. Values in a list
//!   are alternatives; keys and operators are all required. A request without a Recipient has
//!   no such values, so only a statement without these conditions can match it.
//!
//! Anything else (`NotAction`, `NotPrincipal`, `Service` principals, another operator such as
//! `StringNotEquals` or an `...IfExists`, another condition key) makes the policy fail to load:
//! a fixture that silently ignored a condition would allow what AWS refuses.

use std::collections::BTreeMap;

use serde_json::Value;

/// The two operations the local KMS serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `kms:GenerateDataKey`.
    GenerateDataKey,
    /// `kms:Decrypt`.
    Decrypt,
}

impl Operation {
    /// The IAM action name.
    pub fn action(self) -> &'static str {
        match self {
            Operation::GenerateDataKey => "kms:GenerateDataKey",
            Operation::Decrypt => "kms:Decrypt",
        }
    }
}

/// What a request brings to the policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestContext {
    /// The caller's ARN.
    pub principal: String,
    /// The verified Recipient's measurements (`None` without a Recipient): PCR index to value.
    pub recipient_pcrs: Option<BTreeMap<u8, Vec<u8>>>,
}

/// Why a policy could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key policy: {0}")]
pub struct PolicyError(pub String);

fn err(message: impl Into<String>) -> PolicyError {
    PolicyError(message.into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Principal {
    Any,
    Arns(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    StringEquals,
    StringEqualsIgnoreCase,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Condition {
    operator: Operator,
    /// PCR index (ImageSha384 is PCR0).
    pcr: u8,
    values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Statement {
    sid: Option<String>,
    effect: Effect,
    principal: Principal,
    actions: Vec<String>,
    conditions: Vec<Condition>,
}

/// A loaded key policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPolicy {
    statements: Vec<Statement>,
}

/// The decision on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// An Allow statement matched and no Deny did.
    Allow {
        /// The matching statement's Sid, if any.
        sid: Option<String>,
    },
    /// A Deny statement matched.
    ExplicitDeny {
        /// Its Sid, if any.
        sid: Option<String>,
    },
    /// No statement allows it.
    ImplicitDeny,
}

fn strings(value: &Value, what: &str) -> Result<Vec<String>, PolicyError> {
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| err(format!("{what} must be strings")))
            })
            .collect(),
        _ => Err(err(format!("{what} must be a string or a non-empty list"))),
    }
}

fn parse_principal(value: &Value) -> Result<Principal, PolicyError> {
    match value {
        Value::String(s) if s == "*" => Ok(Principal::Any),
        Value::Object(map) => {
            let mut arns = Vec::new();
            for (kind, v) in map {
                if kind != "AWS" {
                    return Err(err(format!(
                        "principal type {kind:?} is not understood (only AWS)"
                    )));
                }
                for arn in strings(v, "principal")? {
                    if arn == "*" {
                        return Ok(Principal::Any);
                    }
                    if !arn.starts_with("arn:aws:iam::") {
                        return Err(err(format!("principal {arn:?} is not an iam arn")));
                    }
                    arns.push(arn);
                }
            }
            if arns.is_empty() {
                return Err(err("empty principal"));
            }
            Ok(Principal::Arns(arns))
        }
        _ => Err(err("principal must be \"*\" or {\"AWS\": ...}")),
    }
}

fn parse_condition_key(key: &str) -> Result<u8, PolicyError> {
    let lower = key.to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix("kms:recipientattestation:") else {
        return Err(err(format!("condition key {key:?} is not understood")));
    };
    if rest == "imagesha384" {
        return Ok(0);
    }
    rest.strip_prefix("pcr")
        .filter(|n| !n.is_empty() && n.len() <= 2 && n.bytes().all(|b| b.is_ascii_digit()))
        .filter(|n| n.len() == 1 || !n.starts_with('0'))
        .and_then(|n| n.parse::<u8>().ok())
        .filter(|n| *n < 32)
        .ok_or_else(|| err(format!("condition key {key:?} is not understood")))
}

fn parse_conditions(value: &Value) -> Result<Vec<Condition>, PolicyError> {
    let Value::Object(operators) = value else {
        return Err(err("Condition must be an object"));
    };
    let mut conditions = Vec::new();
    for (name, keys) in operators {
        let operator = match name.as_str() {
            "StringEquals" => Operator::StringEquals,
            "StringEqualsIgnoreCase" => Operator::StringEqualsIgnoreCase,
            other => {
                return Err(err(format!(
                    "condition operator {other:?} is not understood"
                )));
            }
        };
        let Value::Object(keys) = keys else {
            return Err(err(format!("{name} must map condition keys to values")));
        };
        if keys.is_empty() {
            return Err(err(format!("{name} has no condition keys")));
        }
        for (key, values) in keys {
            let pcr = parse_condition_key(key)?;
            let values = strings(values, "condition values")?;
            conditions.push(Condition {
                operator,
                pcr,
                values,
            });
        }
    }
    Ok(conditions)
}

fn parse_statement(value: &Value) -> Result<Statement, PolicyError> {
    let Value::Object(map) = value else {
        return Err(err("a statement must be an object"));
    };
    let mut sid = None;
    let mut effect = None;
    let mut principal = None;
    let mut actions = None;
    let mut resource = false;
    let mut conditions = Vec::new();
    for (field, v) in map {
        match field.as_str() {
            "Sid" => {
                sid = Some(
                    v.as_str()
                        .ok_or_else(|| err("Sid must be a string"))?
                        .to_owned(),
                )
            }
            "Effect" => {
                effect = Some(match v.as_str() {
                    Some("Allow") => Effect::Allow,
                    Some("Deny") => Effect::Deny,
                    _ => return Err(err("Effect must be Allow or Deny")),
                })
            }
            "Principal" => principal = Some(parse_principal(v)?),
            "Action" => {
                let list = strings(v, "Action")?;
                for action in &list {
                    let lower = action.to_ascii_lowercase();
                    if lower != "*" && !lower.starts_with("kms:") {
                        return Err(err(format!("action {action:?} is not a kms action")));
                    }
                }
                actions = Some(list);
            }
            "Resource" => {
                if strings(v, "Resource")? != ["*"] {
                    return Err(err("a key policy's Resource must be \"*\""));
                }
                resource = true;
            }
            "Condition" => conditions = parse_conditions(v)?,
            other => {
                return Err(err(format!(
                    "statement element {other:?} is not understood"
                )));
            }
        }
    }
    let what = sid.as_deref().unwrap_or("a statement");
    Ok(Statement {
        effect: effect.ok_or_else(|| err(format!("{what} has no Effect")))?,
        principal: principal.ok_or_else(|| err(format!("{what} has no Principal")))?,
        actions: actions.ok_or_else(|| err(format!("{what} has no Action")))?,
        conditions: if resource {
            conditions
        } else {
            return Err(err(format!("{what} has no Resource")));
        },
        sid,
    })
}

/// Case-insensitive match with `*` (any run) and `?` (one character).
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<u8> = pattern.bytes().map(|b| b.to_ascii_lowercase()).collect();
    let t: Vec<u8> = text.bytes().map(|b| b.to_ascii_lowercase()).collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            pi += 1;
            mark = ti;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|b| *b == b'*')
}

impl Statement {
    fn matches(&self, operation: Operation, request: &RequestContext) -> bool {
        let principal = match &self.principal {
            Principal::Any => true,
            Principal::Arns(arns) => arns.iter().any(|a| *a == request.principal),
        };
        principal
            && self.actions.iter().any(|a| glob(a, operation.action()))
            && self.conditions.iter().all(|c| c.holds(request))
    }
}

impl Condition {
    fn holds(&self, request: &RequestContext) -> bool {
        let Some(actual) = request
            .recipient_pcrs
            .as_ref()
            .and_then(|pcrs| pcrs.get(&self.pcr))
        else {
            return false;
        };
        let actual = hex::encode(actual);
        self.values.iter().any(|v| match self.operator {
            Operator::StringEquals => *v == actual,
            Operator::StringEqualsIgnoreCase => v.eq_ignore_ascii_case(&actual),
        })
    }
}

impl KeyPolicy {
    /// Parse a policy document; see the module documentation for what is understood.
    pub fn from_json(text: &str) -> Result<Self, PolicyError> {
        let doc: Value = serde_json::from_str(text).map_err(|e| err(format!("not json: {e}")))?;
        let Value::Object(map) = doc else {
            return Err(err("must be a json object"));
        };
        let mut statements = None;
        for (field, v) in &map {
            match field.as_str() {
                "Version" => {
                    if v.as_str() != Some("2012-10-17") {
                        return Err(err("Version must be \"2012-10-17\""));
                    }
                }
                "Id" => {}
                "Statement" => {
                    statements = Some(match v {
                        Value::Array(items) => items.iter().map(parse_statement).collect::<Result<
                            Vec<_>,
                            _,
                        >>(
                        )?,
                        single @ Value::Object(_) => vec![parse_statement(single)?],
                        _ => return Err(err("Statement must be a list or an object")),
                    });
                }
                other => return Err(err(format!("element {other:?} is not understood"))),
            }
        }
        let statements = statements.ok_or_else(|| err("no Statement"))?;
        Ok(Self { statements })
    }

    /// Decide on `operation` for `request`.
    pub fn evaluate(&self, operation: Operation, request: &RequestContext) -> Decision {
        let matching = |effect| {
            self.statements
                .iter()
                .find(|s| s.effect == effect && s.matches(operation, request))
        };
        if let Some(deny) = matching(Effect::Deny) {
            return Decision::ExplicitDeny {
                sid: deny.sid.clone(),
            };
        }
        match matching(Effect::Allow) {
            Some(allow) => Decision::Allow {
                sid: allow.sid.clone(),
            },
            None => Decision::ImplicitDeny,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLE: &str = "arn:aws:iam::111122223333:role/nautilus-enclave";

    fn request(pcr0: Option<u8>) -> RequestContext {
        RequestContext {
            principal: ROLE.into(),
            recipient_pcrs: pcr0.map(|b| {
                (0u8..16)
                    .map(|i| (i, vec![if i == 0 { b } else { 0 }; 48]))
                    .collect()
            }),
        }
    }

    fn policy(statements: &str) -> Result<KeyPolicy, PolicyError> {
        KeyPolicy::from_json(&format!(
            r#"{{"Version":"2012-10-17","Statement":[{statements}]}}"#
        ))
    }

    fn allow_pcr0(op: &str, value: &str) -> String {
        format!(
            r#"{{"Sid":"enclave","Effect":"Allow","Principal":{{"AWS":"{ROLE}"}},"Action":{op},"Resource":"*",
               "Condition":{{"StringEqualsIgnoreCase":{{"kms:RecipientAttestation:ImageSha384":"{value}"}}}}}}"#
        )
    }

    #[test]
    fn recipient_conditions_decide() {
        let aa = "AA".repeat(48);
        let p = policy(&allow_pcr0(r#"["kms:Decrypt","kms:GenerateDataKey"]"#, &aa)).expect("load");
        assert!(matches!(
            p.evaluate(Operation::Decrypt, &request(Some(0xaa))),
            Decision::Allow { .. }
        ));
        assert!(matches!(
            p.evaluate(Operation::GenerateDataKey, &request(Some(0xaa))),
            Decision::Allow { .. }
        ));
        assert_eq!(
            p.evaluate(Operation::Decrypt, &request(Some(0xbb))),
            Decision::ImplicitDeny
        );
        // No Recipient: the conditioned statement cannot match.
        assert_eq!(
            p.evaluate(Operation::Decrypt, &request(None)),
            Decision::ImplicitDeny
        );
        // Another principal.
        let mut other = request(Some(0xaa));
        other.principal = "arn:aws:iam::111122223333:role/other".into();
        assert_eq!(
            p.evaluate(Operation::Decrypt, &other),
            Decision::ImplicitDeny
        );
        // StringEquals is case-sensitive (the attested value is lower-case hex).
        let p =
            policy(&allow_pcr0(r#""kms:Decrypt""#, &aa).replace("IgnoreCase", "")).expect("load");
        assert_eq!(
            p.evaluate(Operation::Decrypt, &request(Some(0xaa))),
            Decision::ImplicitDeny
        );
    }

    #[test]
    fn explicit_deny_wins_and_wildcards_match() {
        let aa = "aa".repeat(48);
        let statements = format!(
            r#"{},{{"Sid":"no","Effect":"Deny","Principal":"*","Action":"kms:Decrypt","Resource":"*",
               "Condition":{{"StringEquals":{{"kms:RecipientAttestation:PCR1":"{}"}}}}}}"#,
            allow_pcr0(r#""kms:*""#, &aa),
            "00".repeat(48)
        );
        let p = policy(&statements).expect("load");
        assert_eq!(
            p.evaluate(Operation::Decrypt, &request(Some(0xaa))),
            Decision::ExplicitDeny {
                sid: Some("no".into())
            }
        );
        assert!(matches!(
            p.evaluate(Operation::GenerateDataKey, &request(Some(0xaa))),
            Decision::Allow { .. }
        ));
        assert!(glob("kms:GenerateDataKey*", "kms:GenerateDataKey"));
        assert!(glob("KMS:decrypt", "kms:Decrypt"));
        assert!(!glob("kms:Encrypt", "kms:Decrypt"));
        assert!(glob("kms:?ecrypt", "kms:Decrypt"));
    }

    #[test]
    fn unconditioned_allow_serves_requests_without_recipient() {
        let p = policy(&format!(
            r#"{{"Effect":"Allow","Principal":{{"AWS":["{ROLE}"]}},"Action":"kms:Decrypt","Resource":"*"}}"#
        ))
        .expect("load");
        assert!(matches!(
            p.evaluate(Operation::Decrypt, &request(None)),
            Decision::Allow { sid: None }
        ));
        // An account root grants nothing without IAM policies.
        let p = policy(
            r#"{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"}"#,
        )
        .expect("load");
        assert_eq!(
            p.evaluate(Operation::Decrypt, &request(None)),
            Decision::ImplicitDeny
        );
    }

    #[test]
    fn what_is_not_understood_is_refused_at_load() {
        let base = r#""Effect":"Allow","Principal":"*","Action":"kms:Decrypt","Resource":"*""#;
        for bad in [
            format!(r#"{{{base},"Condition":{{"StringNotEquals":{{"kms:RecipientAttestation:PCR0":"00"}}}}}}"#),
            format!(r#"{{{base},"Condition":{{"StringEqualsIfExists":{{"kms:RecipientAttestation:PCR0":"00"}}}}}}"#),
            format!(r#"{{{base},"Condition":{{"StringEquals":{{"aws:SourceIp":"10.0.0.1"}}}}}}"#),
            format!(r#"{{{base},"Condition":{{"StringEquals":{{"kms:RecipientAttestation:PCR32":"00"}}}}}}"#),
            format!(r#"{{{base},"Condition":{{"StringEquals":{{"kms:RecipientAttestation:PCR01":"00"}}}}}}"#),
            format!(r#"{{{base},"Condition":{{"StringEquals":{{}}}}}}"#),
            format!(r#"{{{base},"NotAction":"kms:Encrypt"}}"#),
            r#"{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"kms:Decrypt","Resource":"*"}"#.into(),
            r#"{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"*"}"#.into(),
            r#"{"Effect":"Allow","Principal":"*","Action":"kms:Decrypt","Resource":"arn:aws:s3:::x"}"#.into(),
            r#"{"Effect":"Maybe","Principal":"*","Action":"kms:Decrypt","Resource":"*"}"#.into(),
            r#"{"Effect":"Allow","Principal":"*","Action":"kms:Decrypt"}"#.into(),
        ] {
            assert!(policy(&bad).is_err(), "{bad}");
        }
        assert!(KeyPolicy::from_json(r#"{"Version":"2008-10-17","Statement":[]}"#).is_err());
        assert!(KeyPolicy::from_json("[]").is_err());
        assert!(KeyPolicy::from_json(r#"{"Version":"2012-10-17"}"#).is_err());
    }
}
