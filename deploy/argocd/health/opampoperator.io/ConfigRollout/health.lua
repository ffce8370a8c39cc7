-- Argo CD health of an opampoperator.io ConfigRollout, read from what the operator
-- writes: status.observedGeneration, status.phase and the kstatus conditions Ready,
-- Reconciling and Stalled (docs/rollout.md; src/opamp_operator/k8s/rollouts.py,
-- rollout_conditions()). Tested against statuses the operator really wrote:
-- tests/world_proofs/test_gitops_health.py.
local hs = {}

local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function described(phase)
  local message = obj.status.message
  if message == nil or message == "" then
    return phase
  end
  return phase .. ": " .. message
end

local generation = obj.metadata.generation
if obj.status == nil or obj.status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the rollout"
  return hs
end
if generation ~= nil and obj.status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local phase = obj.status.phase
if phase == "Failed" or phase == "RolledBack" or phase == "Aborted" then
  hs.status = "Degraded"
  hs.message = described(phase)
  return hs
end
-- A blocked preflight or a spec naming nothing usable: the operator cannot go on.
local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = (stalled.reason or "Stalled") .. ": " .. (stalled.message or "")
  return hs
end
if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = described(phase)
  return hs
end
if phase == "Paused" then
  hs.status = "Suspended"
  hs.message = described(phase)
  return hs
end
-- Pending, Progressing, or a phase this script does not know yet.
hs.status = "Progressing"
hs.message = described(phase or "Pending")
return hs
