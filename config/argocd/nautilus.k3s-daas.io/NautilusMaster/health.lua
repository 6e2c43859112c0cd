-- Argo CD health check for nautilus.k3s-daas.io/NautilusMaster.
-- Lua 5.1 only: Argo CD runs it with gopher-lua. Tests: health_test.yaml, run by .ci/run.
--
--   Progressing  no status or conditions yet, or the status is for an older metadata.generation,
--                or Ready is not True and nothing has failed for good
--   Healthy      condition Ready is True
--   Degraded     Ready is False with a terminal reason: a person has to change the spec or image;
--                or Ready is True but BackupHealthy is False (spec.state: the control plane serves,
--                and a crash now would lose more than one backup interval of writes)
--
-- The message names the condition that holds the resource back, e.g.
-- "Attested=False (AttestationFailed): pcr0 does not match".

-- Must equal TERMINAL_REASONS in crds/src/conditions.rs (.ci/run compares the two lists).
local TERMINAL_REASONS = { "SnapshotRejected", "KeyRefused", "AttestationFailed", "ReportSignatureInvalid", "StartTimeout", "EnclaveFailed", "ConfigRefused", "SimulatedAttestationNotAllowed" }

-- The conditions Ready is derived from, in the order the operator evaluates them.
local PARTS = { "EnclaveRunning", "Attested", "APIServerReady", "SchedulerReady", "ControllerManagerReady" }

local function is_terminal(reason)
  for _, r in ipairs(TERMINAL_REASONS) do
    if r == reason then
      return true
    end
  end
  return false
end

local function find(conditions, condition_type)
  for _, c in ipairs(conditions) do
    if c.type == condition_type then
      return c
    end
  end
  return nil
end

-- "Attested=False (AttestationFailed): <message>"
local function describe(c)
  local text = tostring(c.type) .. "=" .. tostring(c.status) .. " (" .. tostring(c.reason) .. ")"
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. tostring(c.message)
  end
  return text
end

local hs = { status = "Progressing", message = "Waiting for the operator to report status" }

local status = obj.status
if status == nil or status.conditions == nil or #status.conditions == 0 then
  return hs
end
local conditions = status.conditions

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
if generation ~= nil and status.observedGeneration ~= generation then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  if status.observedGeneration ~= nil then
    hs.message = hs.message .. " (status is for generation " .. tostring(status.observedGeneration) .. ")"
  end
  return hs
end

local ready = find(conditions, "Ready")
if ready == nil then
  hs.message = "Waiting for condition Ready"
  return hs
end

local backup = find(conditions, "BackupHealthy")
if ready.status == "True" and backup ~= nil and backup.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(backup)
  return hs
end

if ready.status == "True" then
  hs.status = "Healthy"
  if ready.message ~= nil and ready.message ~= "" then
    hs.message = ready.message
  else
    hs.message = "Ready"
  end
  return hs
end

if ready.status == "False" and is_terminal(ready.reason) then
  hs.status = "Degraded"
  -- Name the part that failed for good: the one whose reason Ready carries, else any terminal one.
  local failed = nil
  for _, part in ipairs(PARTS) do
    local c = find(conditions, part)
    if c ~= nil and c.status == "False" and is_terminal(c.reason) then
      if c.reason == ready.reason then
        failed = c
        break
      end
      if failed == nil then
        failed = c
      end
    end
  end
  hs.message = describe(failed or ready)
  return hs
end

-- Still on its way: name the first part that is not True yet.
for _, part in ipairs(PARTS) do
  local c = find(conditions, part)
  if c == nil then
    hs.message = "Waiting for condition " .. part
    return hs
  end
  if c.status ~= "True" then
    hs.message = describe(c)
    return hs
  end
end
hs.message = describe(ready)
return hs
