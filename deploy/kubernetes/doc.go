// Package kubernetes holds the agent's Kubernetes manifests (a DaemonSet on
// GPU nodes and its kustomization) and the test that parses and checks
// them, together with deploy/compose.yml, against what the agent needs. It
// has no code; nothing imports it.
package kubernetes
