// Package gpuevents passes the GPU inventory's health events on to the
// agent's event hub, so that package gpu needs to know nothing of the
// hub: gpu sits below runtime, and this adapter above both. The agent's
// wiring (internal/agent), gpu-check and tests import it.
package gpuevents
