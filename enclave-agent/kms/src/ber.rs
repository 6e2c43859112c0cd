//! BER to DER, for the CMS KMS sends.
//!
//! KMS writes `CiphertextForRecipient` the way OpenSSL and BoringSSL stream CMS: BER with
//! indefinite lengths (`30 80 … 00 00`) and the encrypted content as a constructed `[0]`
//! holding `OCTET STRING` chunks. The RustCrypto `der` decoder accepts DER only, so this module
//! rewrites such input into DER first:
//!
//! - indefinite lengths become definite, long-form lengths become minimal;
//! - a constructed universal `OCTET STRING` becomes one primitive `OCTET STRING` of its chunks;
//! - a constructed context-specific element whose children are all `OCTET STRING`s becomes a
//!   primitive element of the same tag (an IMPLICIT string in constructed form, as
//!   `encryptedContent [0] IMPLICIT OCTET STRING`). In the structures [`crate::envelope`]
//!   accepts no EXPLICIT tag wraps an `OCTET STRING`, so the rule is unambiguous there; any other
//!   shape still has to pass every check that follows.
//!
//! Limits: the input is at most [`MAX_INPUT_BYTES`], nesting at most [`MAX_DEPTH`], tags are
//! low-number (below 31) only, and lengths at most four octets. Every failure is a
//! [`BerError`]; nothing here panics or recurses without bound.

/// Largest input accepted (a real `CiphertextForRecipient` is about 500 bytes).
pub const MAX_INPUT_BYTES: usize = 16 * 1024;
/// Deepest nesting accepted (EnvelopedData needs seven levels).
pub const MAX_DEPTH: usize = 16;

const TAG_OCTET_STRING: u8 = 0x04;
const CONSTRUCTED: u8 = 0x20;
const CLASS_MASK: u8 = 0xc0;
const CLASS_CONTEXT: u8 = 0x80;

/// Why a BER input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BerError {
    /// The input is larger than [`MAX_INPUT_BYTES`].
    #[error("input is {len} bytes, more than the {max}-byte limit")]
    TooLarge {
        /// Input size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The input ends inside an element.
    #[error("input ends inside an element")]
    Truncated,
    /// Nesting deeper than [`MAX_DEPTH`].
    #[error("nesting is deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// A high tag number (31 or more), which CMS does not use here.
    #[error("high tag numbers are not accepted")]
    HighTag,
    /// A length form this reader refuses (reserved, more than four octets, indefinite on a
    /// primitive element).
    #[error("unsupported length encoding: {0}")]
    Length(&'static str),
    /// Bytes after the top-level element, or children overrunning their parent.
    #[error("trailing or overrunning bytes")]
    Trailing,
    /// A constructed string holds something other than string chunks.
    #[error("constructed octet string holds a non-octet-string element")]
    BadChunk,
}

/// Rewrite one BER element (the whole input) as DER.
pub fn to_der(input: &[u8]) -> Result<Vec<u8>, BerError> {
    if input.len() > MAX_INPUT_BYTES {
        return Err(BerError::TooLarge {
            len: input.len(),
            max: MAX_INPUT_BYTES,
        });
    }
    let mut reader = Reader { input, pos: 0 };
    let element = reader.element(0)?;
    if reader.pos != input.len() {
        return Err(BerError::Trailing);
    }
    let mut out = Vec::with_capacity(input.len());
    element.write(&mut out);
    Ok(out)
}

/// A decoded element: primitive content, or children.
enum Element {
    Primitive { tag: u8, content: Vec<u8> },
    Constructed { tag: u8, children: Vec<Element> },
}

impl Element {
    fn is_octet_string(&self) -> bool {
        matches!(self, Element::Primitive { tag, .. } if *tag == TAG_OCTET_STRING)
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Element::Primitive { tag, content } => {
                out.push(*tag);
                write_len(out, content.len());
                out.extend_from_slice(content);
            }
            Element::Constructed { tag, children } => {
                let mut body = Vec::new();
                for child in children {
                    child.write(&mut body);
                }
                out.push(*tag);
                write_len(out, body.len());
                out.extend_from_slice(&body);
            }
        }
    }
}

fn write_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        // Checked: below 0x80.
        out.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    let significant = &bytes[skip..];
    // At most size_of::<usize>() octets.
    out.push(0x80 | significant.len() as u8);
    out.extend_from_slice(significant);
}

struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
}

enum Len {
    Definite(usize),
    Indefinite,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, BerError> {
        let b = *self.input.get(self.pos).ok_or(BerError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn at_end_of_contents(&self) -> bool {
        self.input.get(self.pos..self.pos + 2) == Some(&[0, 0][..])
    }

    fn len(&mut self) -> Result<Len, BerError> {
        let first = self.byte()?;
        if first < 0x80 {
            return Ok(Len::Definite(usize::from(first)));
        }
        if first == 0x80 {
            return Ok(Len::Indefinite);
        }
        if first == 0xff {
            return Err(BerError::Length("reserved length octet"));
        }
        let count = usize::from(first & 0x7f);
        if count > 4 {
            return Err(BerError::Length("length of more than four octets"));
        }
        let mut len = 0usize;
        for _ in 0..count {
            len = (len << 8) | usize::from(self.byte()?);
        }
        if len > self.input.len() {
            return Err(BerError::Truncated);
        }
        Ok(Len::Definite(len))
    }

    fn element(&mut self, depth: usize) -> Result<Element, BerError> {
        if depth > MAX_DEPTH {
            return Err(BerError::TooDeep);
        }
        let tag = self.byte()?;
        if tag & 0x1f == 0x1f {
            return Err(BerError::HighTag);
        }
        let constructed = tag & CONSTRUCTED != 0;
        let len = self.len()?;
        if !constructed {
            let Len::Definite(len) = len else {
                return Err(BerError::Length("indefinite length on a primitive element"));
            };
            let end = self.pos.checked_add(len).ok_or(BerError::Truncated)?;
            let content = self
                .input
                .get(self.pos..end)
                .ok_or(BerError::Truncated)?
                .to_vec();
            self.pos = end;
            return Ok(Element::Primitive { tag, content });
        }

        let mut children = Vec::new();
        match len {
            Len::Definite(len) => {
                let end = self.pos.checked_add(len).ok_or(BerError::Truncated)?;
                if end > self.input.len() {
                    return Err(BerError::Truncated);
                }
                while self.pos < end {
                    children.push(self.element(depth + 1)?);
                }
                if self.pos != end {
                    return Err(BerError::Trailing);
                }
            }
            Len::Indefinite => loop {
                if self.at_end_of_contents() {
                    self.pos += 2;
                    break;
                }
                if self.pos >= self.input.len() {
                    return Err(BerError::Truncated);
                }
                children.push(self.element(depth + 1)?);
            },
        }

        let string_tag = tag & !CONSTRUCTED;
        if string_tag == TAG_OCTET_STRING {
            // A constructed OCTET STRING: its chunks, in order, as one primitive string.
            return flatten(string_tag, children);
        }
        if tag & CLASS_MASK == CLASS_CONTEXT
            && !children.is_empty()
            && children.iter().all(Element::is_octet_string)
        {
            return flatten(string_tag, children);
        }
        Ok(Element::Constructed { tag, children })
    }
}

fn flatten(tag: u8, children: Vec<Element>) -> Result<Element, BerError> {
    let mut content = Vec::new();
    for child in children {
        match child {
            Element::Primitive {
                tag: TAG_OCTET_STRING,
                content: chunk,
            } => content.extend_from_slice(&chunk),
            _ => return Err(BerError::BadChunk),
        }
    }
    Ok(Element::Primitive { tag, content })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_passes_through_unchanged() {
        let der = [0x30, 0x06, 0x02, 0x01, 0x02, 0x04, 0x01, 0xaa];
        assert_eq!(to_der(&der), Ok(der.to_vec()));
    }

    #[test]
    fn indefinite_lengths_and_chunked_strings_become_der() {
        // SEQUENCE (indefinite) { INTEGER 2, [0] constructed (indefinite) { OCTET STRING aa,
        // OCTET STRING bb cc } }
        let ber = [
            0x30, 0x80, 0x02, 0x01, 0x02, 0xa0, 0x80, 0x04, 0x01, 0xaa, 0x04, 0x02, 0xbb, 0xcc,
            0x00, 0x00, 0x00, 0x00,
        ];
        let der = [0x30, 0x08, 0x02, 0x01, 0x02, 0x80, 0x03, 0xaa, 0xbb, 0xcc];
        assert_eq!(to_der(&ber), Ok(der.to_vec()));
        // A constructed universal OCTET STRING, definite length, non-minimal long form.
        let ber = [0x24, 0x81, 0x06, 0x04, 0x01, 0x01, 0x04, 0x01, 0x02];
        assert_eq!(to_der(&ber), Ok(vec![0x04, 0x02, 0x01, 0x02]));
        // Long lengths are rewritten minimally.
        let mut ber = vec![0x04, 0x82, 0x00, 0x81];
        ber.extend([7u8; 0x81]);
        let out = to_der(&ber).expect("long form");
        assert_eq!(&out[..3], &[0x04, 0x81, 0x81]);
    }

    #[test]
    fn malformed_inputs_fail_closed() {
        let cases: &[(&[u8], BerError)] = &[
            (&[], BerError::Truncated),
            (&[0x30], BerError::Truncated),
            (&[0x30, 0x80], BerError::Truncated),
            (&[0x30, 0x80, 0x00], BerError::Truncated),
            (&[0x30, 0x03, 0x02, 0x01], BerError::Truncated),
            (
                &[0x04, 0x80, 0x00, 0x00],
                BerError::Length("indefinite length on a primitive element"),
            ),
            (&[0x04, 0xff], BerError::Length("reserved length octet")),
            (
                &[0x04, 0x85, 0, 0, 0, 0, 1, 0],
                BerError::Length("length of more than four octets"),
            ),
            (&[0x04, 0x84, 0xff, 0xff, 0xff, 0xff], BerError::Truncated),
            (&[0x1f, 0x81, 0x00, 0x00], BerError::HighTag),
            (&[0x04, 0x00, 0x00], BerError::Trailing),
            // The child overruns its parent.
            (&[0x30, 0x02, 0x04, 0x02, 0xaa, 0xbb], BerError::Trailing),
            // A constructed OCTET STRING with a SEQUENCE chunk.
            (&[0x24, 0x02, 0x30, 0x00], BerError::BadChunk),
        ];
        for (input, want) in cases {
            assert_eq!(to_der(input).as_ref(), Err(want), "{input:02x?}");
        }
    }

    #[test]
    fn depth_and_size_limits() {
        let mut deep = Vec::new();
        for _ in 0..=MAX_DEPTH + 1 {
            deep.extend([0x30, 0x80]);
        }
        assert_eq!(to_der(&deep), Err(BerError::TooDeep));
        let big = vec![0u8; MAX_INPUT_BYTES + 1];
        assert!(matches!(to_der(&big), Err(BerError::TooLarge { .. })));
    }
}
