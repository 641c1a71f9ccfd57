// Package agent assembles the host agent from its parts, once, for every
// program that runs one: the daemon (cmd/host-agent), its self-test, the
// benchmark's agent (cmd/host-agent-bench) and gpu-check. What the
// benchmark measures and what gpu-check proves is therefore the agent
// that ships: the same event hub and pull timer, the same reservation
// kinds in the same order (GPUs, share of the host, host ports, disk
// limits, volumes, NUMA, the default bandwidth), the same lifecycle,
// reporter and API server, the same usage of exits, and the same
// background loops (the disk watch, the usage meter).
//
// cmd/ reads the configuration (environment, files) and handles signals;
// it opens what only it can choose (NVML or a mock, the CDI injector, the
// runtime back end and the rentals' network) and hands them to New in an
// Options value. New returns the Agent; Run serves until its context is
// done and Close releases what New built. A new part of the agent is one
// field in Options and one call in New (or one Loop for a background
// loop), not a change in each program.
//
// Who may import it: the programs under cmd/ of this module, and nothing
// else. It sits on top of every other package of the agent; nothing of
// the agent imports it. Go's internal/ rule keeps it out of other
// modules. Beside it under internal/ is the test support (internal/testenv,
// internal/conformance, internal/invariant), which it never imports and
// which no shipped program reaches (TestShippedBinariesHoldNoTestSupport).
//
// The layers, from the bottom up; a package imports only packages of its
// own layer or below (TestImportsFlowDown reads every import and holds the
// tree to it):
//
//  1. gpu, runtime/hostinfo, runtime/hostport: the hardware and the host's
//     facts, which import nothing of the agent's (and leaf packages:
//     runtime/containerd/daemon, the test payload, gpu-check's probe).
//  2. runtime/events: the event stream.
//  3. runtime: the contract (Runtime, InstanceSpec, labels, errors): types
//     and the pure functions over them.
//  4. beside the contract: cdi (device injection), runtime/events/gpuevents,
//     runtime/backend (what the back ends share),
//     the reservation kinds (runtime/gpualloc, runtime/share,
//     runtime/disk, runtime/numa), runtime/volume, runtime/usage,
//     runtime/network.
//  5. runtime/containerd, runtime/docker: the back ends; internal/testenv.
//  6. runtime/lifecycle: the one owner of a rental's lifecycle, above
//     every back end and importing none; runtime/selftest: the host's
//     checks; internal/conformance, internal/invariant.
//  7. server/reporter: the central server's protocol and the host report.
//  8. server: the API.
//  9. internal/agent: this builder.
//  10. cmd/...: the programs.
package agent
