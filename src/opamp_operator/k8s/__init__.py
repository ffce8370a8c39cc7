"""The Kubernetes shell: kopf handlers that read fleets, pods and ConfigMaps, hand them to
the pure fleet logic, and write back status, revisions, events and pod conditions."""
