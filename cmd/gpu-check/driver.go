package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/nvidia-container-toolkit/pkg/lookup"
)

// defaultDriverRoots are where a driver installed outside / is looked for
// when neither --driver-root nor NVIDIA_DRIVER_ROOT says: the layout of
// GKE-style hosts and of sandboxed machines that expose the host's driver
// read-only.
var defaultDriverRoots = []string{"/usr/local/nvidia"}

// driverRoot decides where the driver's libraries and binaries live: the
// flag, then NVIDIA_DRIVER_ROOT, then a known root that holds NVML, then /.
// It says which one it took and why.
func driverRoot(flagValue string) (root, why string) {
	if flagValue != "" {
		return filepath.Clean(flagValue), "--driver-root"
	}
	if v := os.Getenv("NVIDIA_DRIVER_ROOT"); v != "" {
		return filepath.Clean(v), "NVIDIA_DRIVER_ROOT"
	}
	for _, r := range defaultDriverRoots {
		if nvmlLibrary(r) != "" {
			return r, "holds libnvidia-ml.so.1"
		}
	}
	return "/", "default"
}

// devRoot is where the driver's device nodes are: under the driver root
// when it has its own /dev (a containerized driver), else the host's /dev.
func devRoot(driverRoot string) string {
	if _, err := os.Stat(filepath.Join(driverRoot, "dev", "nvidiactl")); err == nil {
		return driverRoot
	}
	return "/"
}

// nvmlLibrary finds libnvidia-ml.so.1 under root the way nvcdi finds the
// driver's libraries (the same locator, so NVML and the CDI spec come from
// one driver), then by a shallow walk of root for layouts it does not
// know. It returns "" when there is none.
func nvmlLibrary(root string) string {
	if paths, err := lookup.NewLibraryLocator(lookup.WithRoot(root)).Locate("libnvidia-ml.so.1"); err == nil && len(paths) > 0 {
		return paths[0]
	}
	if root == "/" {
		return ""
	}
	var found string
	stop := errors.New("found")
	_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() && strings.Count(strings.TrimPrefix(path, root), "/") > 4 {
			return fs.SkipDir
		}
		if d.Name() == "libnvidia-ml.so.1" {
			found = path
			return stop
		}
		return nil
	})
	return found
}

// openNVML returns the NVML library of the driver under root, loaded from
// that root rather than from the loader's search path, so a driver that is
// not under / is still found.
func openNVML(root string) (lib nvml.Interface, path string, err error) {
	path = nvmlLibrary(root)
	if path == "" {
		if root != "/" {
			return nil, "", fmt.Errorf("no libnvidia-ml.so.1 under driver root %s", root)
		}
		// Let the dynamic loader search, as the agent does.
		return nvml.New(), "libnvidia-ml.so.1 (loader search path)", nil
	}
	return nvml.New(nvml.WithLibraryPath(path)), path, nil
}

// hostLdconfig is the ldconfig the CDI hook runs by default, if the host
// has it; the hook resolves a .real beside it the same way.
func hostLdconfig() bool {
	for _, p := range []string{"/sbin/ldconfig", "/sbin/ldconfig.real"} {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return true
		}
	}
	return false
}
