-- Argo CD health of a kubetune FineTuneSweep (Lua 5.1 / gopher-lua, no string or math library). Reads the
-- conditions the operator writes (Failed, Stalled, Succeeded, Reconciling, each with a reason and a message),
-- status.counts and observedGeneration: a status computed from an older spec is Progressing, whatever it says.
-- Healthy once every trial has ended and one has the objective; Degraded when none has (NoObjective) or the
-- operator cannot go on (a trial's name held by another object, a trial the API server refuses); else
-- Progressing with the trials done and running.
local hs = {status = "Progressing", message = "Waiting for the kubetune operator"}

if obj.metadata.deletionTimestamp ~= nil then
  hs.message = "Being deleted"
  return hs
end
local status = obj.status
if status == nil then
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local conditions = {}
if status.conditions ~= nil then
  for _, c in ipairs(status.conditions) do
    conditions[c.type] = c
  end
end

local function describe(c)
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason
end

for _, kind in ipairs({"Failed", "Stalled"}) do
  local c = conditions[kind]
  if c ~= nil and c.status == "True" then
    hs.status = "Degraded"
    hs.message = describe(c)
    return hs
  end
end
local c = conditions["Succeeded"]
if c ~= nil and c.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(c)
  return hs
end
-- Refusals the operator retries (kstatus: InProgress) that someone must clear: a trial's name held by another
-- object, a trial refused for now (a quota).
local stuck = {ChildConflict = true, ChildForbidden = true}
c = conditions["Reconciling"]
if c ~= nil and c.reason ~= nil then
  if stuck[c.reason] then
    hs.status = "Degraded"
  end
  hs.message = describe(c)
end
return hs
