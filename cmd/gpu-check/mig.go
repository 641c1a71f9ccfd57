package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/host-agent/host-agent/cdi"
	"github.com/host-agent/host-agent/gpu"
)

// stageMIG proves MIG rentals on a GPU in MIG mode that holds MIG devices:
// the agent's inventory lists them (MIG_RENTALS), nvcdi generates a spec
// with a device for each, the agent's injection of one gives exactly its
// parent's /dev/nvidiaN and its own nvidia-caps nodes, and a rental holding
// it sees exactly those, with nvidia-smi -L listing exactly that MIG
// device. On a host without a GPU in MIG mode, or without MIG devices, it
// skips and says why: the agent never repartitions a GPU.
func (c *check) stageMIG(ctx context.Context, out io.Writer) (any, error) {
	if c.inv == nil {
		return nil, skipped("needs the NVML inventory (stage 1)")
	}
	var modes []string
	migGPUs := 0
	for _, g := range c.inv.GPUs() {
		modes = append(modes, fmt.Sprintf("GPU %d MIG %s", g.Index, g.MIGMode))
		if g.MIGMode == gpu.MIGEnabled {
			migGPUs++
		}
	}
	if migGPUs == 0 {
		return map[string]any{"mig_modes": modes}, skipped("no GPU has MIG enabled (%s); MIG rentals need a GPU in MIG mode with MIG devices (nvidia-smi -i N -mig 1, then nvidia-smi mig -cgi PROFILE -C)",
			strings.Join(modes, ", "))
	}
	n := c.inv.EnableMIGRentals()
	migs := c.inv.MIGDevices()
	details := map[string]any{"mig_modes": modes, "mig_devices": migs}
	for _, m := range migs {
		fmt.Fprintf(out, "  MIG %s %s on GPU %d (%s), %d MiB, GI %d CI %d\n", m.UUID, m.Profile, m.ParentIndex, m.ParentUUID, m.MemoryTotalMiB, m.GPUInstanceID, m.ComputeInstanceID)
	}
	if n == 0 {
		return details, skipped("%d GPU(s) in MIG mode hold no MIG devices (create them: nvidia-smi mig -cgi PROFILE -C)", migGPUs)
	}
	target := migs[0]
	parentMinor := -1
	for _, g := range c.inv.GPUs() {
		if g.UUID == target.ParentUUID {
			parentMinor = g.MinorNumber
		}
	}

	specDir := filepath.Join(c.cfg.work, "cdi-mig")
	if err := os.MkdirAll(specDir, 0o755); err != nil {
		return details, err
	}
	injector, err := cdi.New(cdi.Config{
		SpecDirs:         []string{specDir},
		AllowedHookPaths: append(cdi.DefaultHookPaths(), c.cfg.hookPath),
		Logger:           c.cfg.logger,
		Inventory:        c.inv,
	})
	if err != nil {
		return details, err
	}
	opts := cdi.GenerateOptions{
		OutDir: specDir, DriverRoot: c.cfg.driverRoot, DevRoot: c.cfg.devRoot,
		HookPath: c.cfg.hookPath, LdconfigPath: c.cfg.ldconfigPath,
	}
	if _, err := injector.EnsureNVIDIASpec(ctx, c.inv, c.lib, opts); err != nil {
		return details, fmt.Errorf("generate a CDI spec with the MIG devices: %w", err)
	}
	details["spec_file"] = filepath.Join(specDir, cdi.GeneratedSpecFile)

	edits, err := injectOne(injector, target.UUID)
	details["edits_for_"+target.UUID] = edits
	if err != nil {
		return details, fmt.Errorf("inject MIG device %s into a container spec: %w", target.UUID, err)
	}
	fmt.Fprintf(out, "edits for %s (%s) after the hook policy and verification:\n", target.UUID, target.Profile)
	for _, d := range edits.Devices {
		fmt.Fprintln(out, "  device", d)
	}
	wantGPU := fmt.Sprintf("/dev/nvidia%d ", parentMinor)
	var gpuNodes, caps []string
	for _, d := range edits.Devices {
		path, _, _ := strings.Cut(d, " ")
		switch {
		case strings.HasPrefix(path, "/dev/nvidia-caps/"):
			caps = append(caps, filepath.Base(path))
		case func() bool { _, ok := gpuNodeMinor(filepath.Base(path)); return ok }():
			gpuNodes = append(gpuNodes, d)
		}
	}
	if len(gpuNodes) != 1 || !strings.HasPrefix(gpuNodes[0], wantGPU) || len(caps) == 0 {
		return details, fmt.Errorf("the injected spec holds GPU nodes %v and nvidia-caps nodes %v, want exactly /dev/nvidia%d and the MIG device's own", gpuNodes, caps, parentMinor)
	}

	for _, f := range bundleFiles {
		if _, err := os.Stat(filepath.Join(c.cfg.bundle, f)); err != nil {
			return details, skipped("the spec injects the MIG device; no container: bundle %s lacks %s", c.cfg.bundle, f)
		}
	}
	alloc := gpu.NewAllocator(c.inv)
	logs, err := c.runProbe(ctx, out, injector, alloc, target.UUID, "containerd-mig", details)
	if err != nil {
		return details, err
	}
	return details, judgeMIGProbe(logs, target.UUID, parentMinor, caps, details)
}

// judgeMIGProbe checks that the rental saw exactly the MIG device: its
// parent's node, the nvidia-caps nodes the spec gave it, and nvidia-smi -L
// listing exactly that MIG device.
func judgeMIGProbe(logs, uuid string, parentMinor int, wantCaps []string, details map[string]any) error {
	var nodes, caps, smi []string
	smiExit := ""
	for _, line := range strings.Split(logs, "\n") {
		switch k, v, _ := strings.Cut(line, " "); k {
		case "DEV":
			if _, ok := gpuNodeMinor(v); ok {
				nodes = append(nodes, v)
			}
		case "CAP":
			caps = append(caps, v)
		case "SMI":
			smi = append(smi, v)
		case "SMI-EXIT":
			smiExit = v
		}
	}
	details["gpu_device_nodes"], details["caps_nodes"] = nodes, caps
	slices.Sort(caps)
	wantCaps = slices.Sorted(slices.Values(wantCaps))
	if want := fmt.Sprintf("nvidia%d", parentMinor); !slices.Equal(nodes, []string{want}) || !slices.Equal(caps, wantCaps) {
		return fmt.Errorf("the container sees GPU nodes %v and nvidia-caps %v, want [%s] and %v", nodes, caps, want, wantCaps)
	}
	var listed []string
	for _, l := range smi {
		if strings.Contains(l, "UUID: MIG-") {
			listed = append(listed, strings.TrimSpace(l))
		}
	}
	details["nvidia_smi_mig"] = listed
	switch {
	case smiExit == "":
		return errors.New("no nvidia-smi in the container: the CDI spec did not mount the driver's nvidia-smi")
	case smiExit != "0":
		return fmt.Errorf("nvidia-smi -L exited %s: %s", smiExit, strings.Join(smi, " | "))
	case len(listed) != 1 || !strings.Contains(listed[0], "UUID: "+uuid+")"):
		return fmt.Errorf("nvidia-smi -L lists MIG devices %v, want exactly %s", listed, uuid)
	}
	return nil
}
