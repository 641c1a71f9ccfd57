package main

import (
	"os"
	"syscall"
)

// faultEnv names a step (containerd.FaultSteps) at which the agent kills
// itself with SIGKILL, mid-start or mid-terminate. Only the fault-matrix
// tests set it: they prove that a restart leaves nothing behind.
const faultEnv = "HOST_AGENT_FAULT"

// faultHook returns the containerd back end's fault hook for the step
// named by HOST_AGENT_FAULT, or nil when it is unset.
func faultHook(getenv func(string) string) func(step string) {
	want := getenv(faultEnv)
	if want == "" {
		return nil
	}
	return func(step string) {
		if step == want {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // the signal is on its way
		}
	}
}
