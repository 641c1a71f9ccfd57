// Command probe is what gpu-check runs inside the rental it starts: it
// reports the NVIDIA device nodes the container sees and the output of
// `nvidia-smi -L`, one fact a line, for gpu-check to judge:
//
//	DEV name         an entry of /dev whose name starts with "nvidia"
//	CAP name         an entry of /dev/nvidia-caps (a MIG device's access nodes)
//	SMI-PATH path    where nvidia-smi was found (SMI-MISSING if nowhere)
//	SMI line         a line nvidia-smi printed
//	SMI-EXIT code    its exit status (-1: it could not be run)
//	END              the probe finished
//
// It is built statically, so that it runs in an image that holds nothing
// but it and a C library for the driver's programs.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// searchPath is where a CDI spec mounts the driver's programs, whatever the
// image's PATH says.
const searchPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/nvidia/bin"

func main() {
	entries, err := os.ReadDir("/dev")
	if err != nil {
		fmt.Println("DEV-ERROR", err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "nvidia") {
			fmt.Println("DEV", e.Name())
		}
	}
	if caps, err := os.ReadDir("/dev/nvidia-caps"); err == nil {
		for _, e := range caps {
			fmt.Println("CAP", e.Name())
		}
	}
	os.Setenv("PATH", searchPath)
	smi, err := exec.LookPath("nvidia-smi")
	if err != nil {
		fmt.Println("SMI-MISSING")
	} else {
		fmt.Println("SMI-PATH", smi)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		out, err := exec.CommandContext(ctx, smi, "-L").CombinedOutput()
		cancel()
		for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
			if line != "" {
				fmt.Println("SMI", line)
			}
		}
		code := 0
		var exit *exec.ExitError
		switch {
		case errors.As(err, &exit):
			code = exit.ExitCode()
		case err != nil:
			fmt.Println("SMI", err)
			code = -1
		}
		fmt.Println("SMI-EXIT", code)
	}
	fmt.Println("END")
}
