-- Argo CD health of an opampoperator.io CollectorFleet, read from what the operator
-- writes: status.observedGeneration and the kstatus conditions Ready, Reconciling and
-- Stalled (src/opamp_operator/fleet/health.py, conditions()). Tested against statuses
-- the operator really wrote: tests/world_proofs/test_gitops_health.py.
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

local function text(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    if c.reason ~= nil and c.reason ~= "" then
      return c.reason .. ": " .. c.message
    end
    return c.message
  end
  return fallback
end

local generation = obj.metadata.generation
if obj.status == nil or obj.status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the fleet"
  return hs
end
if generation ~= nil and obj.status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = text(stalled, "Stalled")
  return hs
end
local reconciling = condition("Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = text(reconciling, "Reconciling")
  return hs
end
local ready = condition("Ready")
if ready == nil or (ready.observedGeneration ~= nil and generation ~= nil and ready.observedGeneration ~= generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report the fleet's Ready condition"
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = text(ready, "Ready")
  return hs
end
-- Ready=False with nothing left to apply: pods whose Collector has not connected yet are
-- still starting; failed configs, unhealthy or gone agents and anything else are problems.
if ready.reason == "PodsWithoutAgent" then
  hs.status = "Progressing"
else
  hs.status = "Degraded"
end
hs.message = text(ready, "Not ready")
return hs
