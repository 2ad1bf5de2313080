-- Argo CD health check for FallbackConfigPolicy (fallback.kong-dp.io).
--
-- Argo CD has no built-in health check for custom resources: without this script it does
-- not assess a policy at all, so a failing policy never turns its application Degraded or
-- Progressing. Install it through argocd-cm (argocd-cm.yaml beside this file). Argo CD
-- passes the object as `obj` and expects {status, message}.
--
--   Progressing  the operator has not reconciled the current spec yet
--                (no status, status.observedGeneration or Ready's observedGeneration
--                behind metadata.generation), or Ready is False for a passing reason
--                (Waiting for the first configuration, Connecting to the control plane)
--   Degraded     Valid is False (the spec is refused), Stalled is True, or Ready is
--                False for any other reason (storage, credentials, pods not injected, ...)
--   Healthy      Ready is True for the current generation
--   Suspended    Ready is False because spec.suspend is true (reason Suspended)
--
-- NB: only Lua's base library is used: Argo CD does not open the string library.

local hs = {}

-- The reasons for Ready=False that pass on their own (src/controller/status.rs).
local passing = { Waiting = true, Connecting = true }

local function condition(conditions, type_)
  for _, c in ipairs(conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function describe(c)
  local text = c.type .. "=" .. tostring(c.status)
  if c.reason ~= nil and c.reason ~= "" then
    text = text .. " (" .. c.reason .. ")"
  end
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
local status = obj.status

if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report the policy's status"
  return hs
end

if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile generation " .. tostring(generation)
  return hs
end

local valid = condition(status.conditions, "Valid")
if valid ~= nil and valid.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(valid)
  return hs
end

-- kstatus' abnormal-true conditions, when the operator writes them.
local stalled = condition(status.conditions, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end
local reconciling = condition(status.conditions, "Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(reconciling)
  return hs
end

local ready = condition(status.conditions, "Ready")
if ready == nil or ready.status == "Unknown" then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end
if generation ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile generation " .. tostring(generation)
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end
if ready.reason == "Suspended" then
  hs.status = "Suspended"
elseif passing[ready.reason] then
  hs.status = "Progressing"
else
  hs.status = "Degraded"
end
hs.message = describe(ready)
return hs
