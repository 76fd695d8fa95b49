-- Argo CD resource actions of a kubetune FineTuneJob (Lua 5.1 / gopher-lua, no string or math library). Each
-- action sets the spec field a Git commit would (docs/gitops.md): suspend and resume spec.suspend, rerun
-- spec.rerunToken. Offered only where the operator acts on them; the others are shown disabled.
local actions = {}
local conditions = {}
if obj.status ~= nil and obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    conditions[c.type] = c.status
  end
end
local ended = conditions["Failed"] == "True" or conditions["Succeeded"] == "True"
local suspended = obj.spec.suspend == true
-- A status from an older spec (an edit, a rerun just asked for) has not been acted on yet.
local current = obj.status ~= nil and obj.status.observedGeneration == obj.metadata.generation

actions["suspend"] = {["iconClass"] = "fa fa-fw fa-pause", ["disabled"] = suspended or ended}
actions["resume"] = {["iconClass"] = "fa fa-fw fa-play", ["disabled"] = not suspended}
actions["rerun"] = {["iconClass"] = "fa fa-fw fa-redo",
                    ["disabled"] = not (current and conditions["Failed"] == "True")}
return actions
