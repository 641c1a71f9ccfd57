// Package backend holds the pieces the runtime back ends
// (runtime/containerd, runtime/docker) share, so that each is written
// once: how a start's end is logged and published, the part of an
// Instance read from the agent's labels, a rental's environment as a list,
// and the loop that runs a back end's periodic work.
//
// Only the back ends import it. It is not the contract (package runtime,
// which it imports): nothing above the back ends needs it.
package backend
