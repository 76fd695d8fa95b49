-- Argo CD health of a kubetune FineTuneJob (Lua 5.1 / gopher-lua). Reads the conditions the operator writes
-- (Failed, Succeeded, Suspended, Running, each with a reason and a message) and observedGeneration: a status
-- computed from an older spec is Progressing, whatever it says, so a commit is never shown with the last run's health.
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

local function holds(kind)
  local c = conditions[kind]
  if c ~= nil and c.status == "True" then
    return c
  end
  return nil
end

local function describe(c)
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason
end

-- Argo CD runs argocd-cm scripts without the string and math libraries (only base, table, package and a safe os),
-- so the eval loss is rounded to 3 decimals with the % operator and printed from integers, identically in gopher-lua
-- (Go's number formatting) and PUC Lua.
local function decimals3(x)
  local n = x * 1000 + 0.5
  n = n - n % 1
  local sign = ""
  if n < 0 then
    sign, n = "-", -n
  end
  local frac = n % 1000
  local pad = ""
  if frac < 10 then
    pad = "00"
  elseif frac < 100 then
    pad = "0"
  end
  return sign .. tostring((n - frac) / 1000) .. "." .. pad .. tostring(frac)
end

local function progress()
  local p = status.progress
  if p == nil or p.step == nil then
    return ""
  end
  local text = " (step " .. tostring(p.step)
  if p.totalSteps ~= nil then
    text = text .. "/" .. tostring(p.totalSteps)
  end
  if status.metrics ~= nil and status.metrics.evalLoss ~= nil then
    text = text .. ", eval loss " .. decimals3(status.metrics.evalLoss)
  end
  return text .. ")"
end

-- Problems of a Pending run that do not go away by waiting: a pod that cannot start, and a child the API server
-- refuses or whose name another object holds (the operator retries those, so they are not Stalled, but someone
-- must act). Shown as Degraded.
local stuck = {ImagePullBackOff = true, CreateContainerConfigError = true, InvalidImageName = true,
               ErrImagePull = true, CreateContainerError = true, ChildForbidden = true, ChildConflict = true}

local c = holds("Failed")
if c ~= nil then
  hs.status = "Degraded"
  hs.message = describe(c)
  return hs
end
c = holds("Stalled")  -- kstatus: the operator cannot make progress without a change
if c ~= nil then
  hs.status = "Degraded"
  hs.message = describe(c)
  return hs
end
c = holds("Succeeded")
if c ~= nil then
  hs.status = "Healthy"
  hs.message = describe(c)
  return hs
end
-- Held: by spec.suspend or a deactivated Kueue Workload (someone must resume it): Suspended; for a queue that
-- cannot admit it (a missing or stopped queue, no Kueue, a namespace Kueue does not manage, no right to read
-- Workloads): Degraded; otherwise waiting in Kueue's queue, admitted or requeued after an eviction, it starts by
-- itself: Progressing.
local held = {Suspended = "Suspended", Deactivated = "Suspended", Inadmissible = "Degraded", NoWorkload = "Degraded",
              KueueUnavailable = "Degraded", KueueForbidden = "Degraded"}
c = holds("Suspended")
if c ~= nil then
  if held[c.reason] ~= nil then
    hs.status = held[c.reason]
  end
  hs.message = describe(c)
  return hs
end
c = holds("Running")
if c ~= nil then
  hs.message = describe(c) .. progress()
  return hs
end
for _, kind in ipairs({"Ready", "Reconciling", "Stalled"}) do
  c = conditions[kind]
  if c ~= nil and c.reason ~= nil then
    if stuck[c.reason] then
      hs.status = "Degraded"
    end
    hs.message = describe(c)
    return hs
  end
end
return hs
