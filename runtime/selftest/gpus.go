package selftest

import (
	"context"
	"fmt"
	"sort"
	"strings"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/moby/moby/client"

	"github.com/host-agent/host-agent/runtime"
)

// GPUHolders lists the GPUs rentals hold, by UUID, each with the rental
// holding it ("namespace/instance" on containerd). It reads and writes
// nothing else: the self-test must not open a back end on the agent's
// rentals, whose watcher would record their exits.
type GPUHolders func(ctx context.Context) (map[string]string, error)

// ContainerdGPUHolders reads the GPU labels of the containers in every
// namespace of the containerd at address: the agent's rentals, another
// agent's on the same host, and leftover test rentals.
func ContainerdGPUHolders(address string) GPUHolders {
	return func(ctx context.Context) (map[string]string, error) {
		c, err := containerd.New(address)
		if err != nil {
			return nil, err
		}
		defer c.Close()
		nss, err := c.NamespaceService().List(ctx)
		if err != nil {
			return nil, fmt.Errorf("list containerd namespaces: %w", err)
		}
		held := map[string]string{}
		for _, ns := range nss {
			infos, err := c.ContainerService().List(namespaces.WithNamespace(ctx, ns), fmt.Sprintf("labels.%q", runtime.LabelGPUs))
			if err != nil {
				return nil, fmt.Errorf("list the containers of namespace %s: %w", ns, err)
			}
			for _, info := range infos {
				for _, g := range runtime.ParseGPULabels(info.Labels[runtime.LabelGPUs], info.Labels[runtime.LabelGPUIndexes]) {
					held[g.UUID] = ns + "/" + info.ID
				}
			}
		}
		return held, nil
	}
}

// DockerGPUHolders reads the GPU labels of every container of the Docker
// daemon at host.
func DockerGPUHolders(host string) GPUHolders {
	return func(ctx context.Context) (map[string]string, error) {
		c, err := client.New(client.WithHost(host), client.WithAPIVersionNegotiation())
		if err != nil {
			return nil, err
		}
		defer c.Close()
		list, err := c.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: make(client.Filters).Add("label", runtime.LabelGPUs)})
		if err != nil {
			return nil, fmt.Errorf("list Docker's containers: %w", err)
		}
		held := map[string]string{}
		for _, ct := range list.Items {
			name := ct.ID
			if len(ct.Names) > 0 {
				name = strings.TrimPrefix(ct.Names[0], "/")
			}
			for _, g := range runtime.ParseGPULabels(ct.Labels[runtime.LabelGPUs], ct.Labels[runtime.LabelGPUIndexes]) {
				held[g.UUID] = name
			}
		}
		return held, nil
	}
}

// describeHolders names the rentals holding GPUs, for a check's detail.
func describeHolders(held map[string]string) string {
	by := map[string]int{}
	for _, h := range held {
		by[h]++
	}
	names := make([]string, 0, len(by))
	for h := range by {
		names = append(names, h)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// ChooseTestGPU says which GPU, if any, the test rental may take. uuids
// are the GPUs a rental could be given, by index; a GPU that a rental
// holds is never taken, and of the others the last, since the agent gives
// its tenants the first free ones. It returns the GPU's UUID, or "" and
// why the GPU part of the test rental is skipped.
func ChooseTestGPU(ctx context.Context, uuids []string, holders GPUHolders) (uuid, skipped string) {
	if len(uuids) == 0 {
		return "", ""
	}
	held, err := holders(ctx)
	if err != nil {
		return "", fmt.Sprintf("the GPU part was skipped: which GPUs rentals hold is unknown (%v)", err)
	}
	for i := len(uuids) - 1; i >= 0; i-- {
		if held[uuids[i]] == "" {
			return uuids[i], ""
		}
	}
	return "", fmt.Sprintf("the GPU part was skipped: all %d GPUs are held by rentals (%s)", len(uuids), describeHolders(held))
}
