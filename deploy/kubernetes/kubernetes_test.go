package kubernetes

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v3"
)

// The subset of the Kubernetes API the manifests use, decoded strictly: a
// misspelt or misplaced field is an unknown field and fails the test, as
// the API server's strict field validation (kubectl's default) would.

type objectMeta struct {
	Name        string            `yaml:"name"`
	Namespace   string            `yaml:"namespace"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

type namespaceObject struct {
	APIVersion string     `yaml:"apiVersion"`
	Kind       string     `yaml:"kind"`
	Metadata   objectMeta `yaml:"metadata"`
}

type daemonSet struct {
	APIVersion string     `yaml:"apiVersion"`
	Kind       string     `yaml:"kind"`
	Metadata   objectMeta `yaml:"metadata"`
	Spec       struct {
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		UpdateStrategy struct {
			Type          string `yaml:"type"`
			RollingUpdate struct {
				MaxUnavailable any `yaml:"maxUnavailable"`
			} `yaml:"rollingUpdate"`
		} `yaml:"updateStrategy"`
		Template struct {
			Metadata objectMeta `yaml:"metadata"`
			Spec     podSpec    `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type podSpec struct {
	HostNetwork                   bool              `yaml:"hostNetwork"`
	DNSPolicy                     string            `yaml:"dnsPolicy"`
	NodeSelector                  map[string]string `yaml:"nodeSelector"`
	Tolerations                   []toleration      `yaml:"tolerations"`
	RuntimeClassName              string            `yaml:"runtimeClassName"`
	PriorityClassName             string            `yaml:"priorityClassName"`
	TerminationGracePeriodSeconds *int64            `yaml:"terminationGracePeriodSeconds"`
	Containers                    []container       `yaml:"containers"`
	Volumes                       []volume          `yaml:"volumes"`
}

type toleration struct {
	Key      string `yaml:"key"`
	Operator string `yaml:"operator"`
	Value    string `yaml:"value"`
	Effect   string `yaml:"effect"`
}

type container struct {
	Name            string   `yaml:"name"`
	Image           string   `yaml:"image"`
	ImagePullPolicy string   `yaml:"imagePullPolicy"`
	Args            []string `yaml:"args"`
	Env             []envVar `yaml:"env"`
	Ports           []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
		Protocol      string `yaml:"protocol"`
	} `yaml:"ports"`
	ReadinessProbe *probe `yaml:"readinessProbe"`
	LivenessProbe  *probe `yaml:"livenessProbe"`
	Resources      struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext struct {
		Privileged   bool `yaml:"privileged"`
		Capabilities struct {
			Add  []string `yaml:"add"`
			Drop []string `yaml:"drop"`
		} `yaml:"capabilities"`
	} `yaml:"securityContext"`
	VolumeMounts []struct {
		Name             string `yaml:"name"`
		MountPath        string `yaml:"mountPath"`
		ReadOnly         bool   `yaml:"readOnly"`
		MountPropagation string `yaml:"mountPropagation"`
	} `yaml:"volumeMounts"`
}

type envVar struct {
	Name      string `yaml:"name"`
	Value     string `yaml:"value"`
	ValueFrom *struct {
		FieldRef *struct {
			FieldPath string `yaml:"fieldPath"`
		} `yaml:"fieldRef"`
		SecretKeyRef *struct {
			Name string `yaml:"name"`
			Key  string `yaml:"key"`
		} `yaml:"secretKeyRef"`
	} `yaml:"valueFrom"`
}

type probe struct {
	HTTPGet struct {
		Path string `yaml:"path"`
		Port int    `yaml:"port"`
	} `yaml:"httpGet"`
	PeriodSeconds       int `yaml:"periodSeconds"`
	InitialDelaySeconds int `yaml:"initialDelaySeconds"`
	FailureThreshold    int `yaml:"failureThreshold"`
}

type volume struct {
	Name     string `yaml:"name"`
	HostPath *struct {
		Path string `yaml:"path"`
		Type string `yaml:"type"`
	} `yaml:"hostPath"`
	Secret *struct {
		SecretName  string `yaml:"secretName"`
		DefaultMode *int   `yaml:"defaultMode"`
	} `yaml:"secret"`
}

type kustomization struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Namespace  string `yaml:"namespace"`
	Labels     []struct {
		Pairs            map[string]string `yaml:"pairs"`
		IncludeSelectors bool              `yaml:"includeSelectors"`
	} `yaml:"labels"`
	Resources []string `yaml:"resources"`
	Images    []struct {
		Name    string `yaml:"name"`
		NewName string `yaml:"newName"`
		NewTag  string `yaml:"newTag"`
	} `yaml:"images"`
}

// decodeStrict decodes every YAML document of file into a value made by
// newFor for the document's apiVersion and kind, refusing unknown fields.
func decodeStrict(t *testing.T, file string, newFor func(apiVersion, kind string) any) []any {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out []any
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for i := 0; ; i++ {
		var node yaml.Node
		if err := dec.Decode(&node); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("%s: document %d: %v", file, i, err)
		}
		var head struct {
			APIVersion string `yaml:"apiVersion"`
			Kind       string `yaml:"kind"`
		}
		if err := node.Decode(&head); err != nil {
			t.Fatalf("%s: document %d: %v", file, i, err)
		}
		v := newFor(head.APIVersion, head.Kind)
		if v == nil {
			t.Fatalf("%s: document %d: %s %q is not a kind these manifests are checked for", file, i, head.APIVersion, head.Kind)
		}
		// node.Decode has no strict mode: re-encode the node and decode it
		// with KnownFields.
		raw, err := yaml.Marshal(&node)
		if err != nil {
			t.Fatal(err)
		}
		strict := yaml.NewDecoder(bytes.NewReader(raw))
		strict.KnownFields(true)
		if err := strict.Decode(v); err != nil {
			t.Fatalf("%s: %s %s: %v", file, head.APIVersion, head.Kind, err)
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		t.Fatalf("%s: no document", file)
	}
	return out
}

func manifestKind(apiVersion, kind string) any {
	switch apiVersion + " " + kind {
	case "v1 Namespace":
		return &namespaceObject{}
	case "apps/v1 DaemonSet":
		return &daemonSet{}
	}
	return nil
}

func loadKustomization(t *testing.T) kustomization {
	t.Helper()
	docs := decodeStrict(t, "kustomization.yaml", func(apiVersion, kind string) any {
		if apiVersion == "kustomize.config.k8s.io/v1beta1" && kind == "Kustomization" {
			return &kustomization{}
		}
		return nil
	})
	if len(docs) != 1 {
		t.Fatalf("kustomization.yaml: %d documents, want 1", len(docs))
	}
	return *docs[0].(*kustomization)
}

// TestKustomizationListsEveryManifest: `kubectl apply -k` applies exactly
// the manifests of the directory.
func TestKustomizationListsEveryManifest(t *testing.T) {
	k := loadKustomization(t)
	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if f != "kustomization.yaml" && !slices.Contains(k.Resources, f) {
			t.Errorf("%s is not listed in kustomization.yaml's resources", f)
		}
	}
	for _, r := range k.Resources {
		if _, err := os.Stat(r); err != nil {
			t.Errorf("kustomization.yaml lists %s: %v", r, err)
		}
	}
	if k.Namespace == "" {
		t.Error("kustomization.yaml sets no namespace")
	}
}

// TestManifestsParse: every manifest the kustomization lists decodes
// strictly into its kind, is named, and lives in the kustomization's
// namespace (or is that namespace).
func TestManifestsParse(t *testing.T) {
	k := loadKustomization(t)
	kinds := map[string]int{}
	for _, f := range k.Resources {
		for _, doc := range decodeStrict(t, f, manifestKind) {
			switch o := doc.(type) {
			case *namespaceObject:
				kinds["Namespace"]++
				if o.Metadata.Name != k.Namespace {
					t.Errorf("%s: Namespace %q, the kustomization's is %q", f, o.Metadata.Name, k.Namespace)
				}
				if o.Metadata.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
					t.Errorf("%s: the namespace must admit the agent's privileged host-network pod (pod-security.kubernetes.io/enforce: privileged)", f)
				}
			case *daemonSet:
				kinds["DaemonSet"]++
				if o.Metadata.Name == "" || o.Metadata.Namespace != k.Namespace {
					t.Errorf("%s: DaemonSet %q in namespace %q, want a name and namespace %q", f, o.Metadata.Name, o.Metadata.Namespace, k.Namespace)
				}
			}
		}
	}
	if kinds["Namespace"] != 1 || kinds["DaemonSet"] != 1 {
		t.Fatalf("kinds = %v, want one Namespace and one DaemonSet", kinds)
	}
}

func loadDaemonSet(t *testing.T) *daemonSet {
	t.Helper()
	docs := decodeStrict(t, "daemonset.yaml", manifestKind)
	ds, ok := docs[0].(*daemonSet)
	if !ok || len(docs) != 1 {
		t.Fatalf("daemonset.yaml: want exactly one DaemonSet")
	}
	return ds
}

func (c *container) env(name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value, true
		}
	}
	return "", false
}

// mountOf returns the volume mounted at or above p and p's path inside it.
func mountOf(c *container, vols []volume, p string) (*volume, string, bool) {
	best := -1
	for i, m := range c.VolumeMounts {
		if (p == m.MountPath || strings.HasPrefix(p, m.MountPath+"/")) &&
			(best < 0 || len(m.MountPath) > len(c.VolumeMounts[best].MountPath)) {
			best = i
		}
	}
	if best < 0 {
		return nil, "", false
	}
	m := c.VolumeMounts[best]
	for i := range vols {
		if vols[i].Name == m.Name {
			return &vols[i], strings.TrimPrefix(strings.TrimPrefix(p, m.MountPath), "/"), m.ReadOnly
		}
	}
	return nil, "", false
}

// TestDaemonSet: the DaemonSet runs the agent as the README runs its image,
// on GPU nodes, on the node's containerd in the namespace `rentals`, with
// the token from a Secret.
func TestDaemonSet(t *testing.T) {
	ds := loadDaemonSet(t)
	pod := ds.Spec.Template.Spec
	for k, v := range ds.Spec.Selector.MatchLabels {
		if ds.Spec.Template.Metadata.Labels[k] != v {
			t.Errorf("the selector's %s=%s is not a label of the pod template", k, v)
		}
	}
	if len(ds.Spec.Selector.MatchLabels) == 0 {
		t.Error("the DaemonSet has no selector")
	}
	if !pod.HostNetwork || pod.DNSPolicy != "ClusterFirstWithHostNet" {
		t.Errorf("hostNetwork %v, dnsPolicy %q: want the node's network (and cluster DNS with it)", pod.HostNetwork, pod.DNSPolicy)
	}
	gpuNodes := false
	for k, v := range pod.NodeSelector {
		gpuNodes = gpuNodes || (strings.HasPrefix(k, "nvidia.com/gpu") && v == "true")
	}
	if !gpuNodes {
		t.Errorf("nodeSelector %v selects no GPU nodes", pod.NodeSelector)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want the agent alone", len(pod.Containers))
	}
	c := &pod.Containers[0]
	for _, m := range c.VolumeMounts {
		if !slices.ContainsFunc(pod.Volumes, func(v volume) bool { return v.Name == m.Name }) {
			t.Errorf("volumeMount %s names no volume", m.Name)
		}
	}

	// The node's containerd, in a namespace of the agent's own.
	sock, ok := c.env("CONTAINERD_ADDRESS")
	if !ok {
		sock = "/run/containerd/containerd.sock" // the agent's default
	}
	v, rest, _ := mountOf(c, pod.Volumes, sock)
	if v == nil || v.HostPath == nil || path.Join(v.HostPath.Path, rest) != "/run/containerd/containerd.sock" {
		t.Errorf("CONTAINERD_ADDRESS %s is not the node's /run/containerd/containerd.sock mounted from the host", sock)
	}
	if ns, _ := c.env("CONTAINERD_NAMESPACE"); ns != "rentals" {
		t.Errorf("CONTAINERD_NAMESPACE = %q, want rentals (beside kubelet's k8s.io, never in it)", ns)
	}
	if rt, ok := c.env("RUNTIME"); ok && rt != "containerd" {
		t.Errorf("RUNTIME = %q on a Kubernetes node, want containerd", rt)
	}

	// The token from a Secret, in a file only root may read.
	tokenFile, ok := c.env("AGENT_TOKEN_FILE")
	if !ok {
		t.Fatal("AGENT_TOKEN_FILE is not set")
	}
	v, key, _ := mountOf(c, pod.Volumes, tokenFile)
	if v == nil || v.Secret == nil || v.Secret.SecretName == "" || key == "" {
		t.Fatalf("AGENT_TOKEN_FILE %s is not a key of a mounted Secret", tokenFile)
	}
	if m := v.Secret.DefaultMode; m == nil || *m&0o077 != 0 {
		t.Errorf("the Secret %s is mounted without a defaultMode of 0400 or 0600: the agent refuses a token file group or others may read", v.Secret.SecretName)
	}
	if _, ok := c.env("AGENT_TOKEN"); ok {
		t.Error("AGENT_TOKEN and AGENT_TOKEN_FILE both set: the agent refuses to start")
	}
	id := slices.IndexFunc(c.Env, func(e envVar) bool {
		return e.Name == "AGENT_ID" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName"
	})
	if id < 0 {
		t.Error("AGENT_ID is not the node's name (valueFrom.fieldRef spec.nodeName)")
	}

	// Everything the README's `docker run` line mounts, at the same paths.
	run := readmeRunLine(t)
	for _, m := range run.volumes {
		v, rest, ro := mountOf(c, pod.Volumes, m.target)
		switch {
		case v == nil || v.HostPath == nil || rest != "" || v.HostPath.Path != m.source:
			t.Errorf("the README mounts %s at %s; the DaemonSet does not mount that host path there", m.source, m.target)
		case m.has("ro") && !ro:
			t.Errorf("%s is read-only in the README, writable in the DaemonSet", m.target)
		case m.has("rshared"):
			for _, vm := range c.VolumeMounts {
				if vm.MountPath == m.target && vm.MountPropagation != "Bidirectional" {
					t.Errorf("%s is rshared in the README; the DaemonSet's mount propagation is %q, want Bidirectional", m.target, vm.MountPropagation)
				}
			}
		}
	}
	if !c.SecurityContext.Privileged {
		for _, cp := range run.capAdd {
			if !slices.Contains(c.SecurityContext.Capabilities.Add, cp) {
				t.Errorf("the README adds %s; the DaemonSet's container neither is privileged nor has it", cp)
			}
		}
	}
	// Probes on the agent's API port (LISTEN_ADDR's default :8080).
	if listen, ok := c.env("LISTEN_ADDR"); ok && listen != ":8080" {
		t.Fatalf("LISTEN_ADDR %q: update the probes' port with it", listen)
	}
	for name, p := range map[string]*probe{"/readyz": c.ReadinessProbe, "/healthz": c.LivenessProbe} {
		if p == nil || p.HTTPGet.Path != name || p.HTTPGet.Port != 8080 {
			t.Errorf("want a probe GET %s on port 8080, have %+v", name, p)
		}
	}
}

type runMount struct{ source, target, opts string }

func (m runMount) has(opt string) bool { return slices.Contains(strings.Split(m.opts, ","), opt) }

type runLine struct {
	volumes                       []runMount
	capAdd, capDrop, securityOpt  []string
	env                           map[string]string
	network, restart, name, image string
}

// readmeRunLine parses the README's `docker run` line for a containerd host
// (the block CI runs, marked image-test: docker-run-containerd).
func readmeRunLine(t *testing.T) runLine {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "<!-- image-test: docker-run-containerd -->")
	if i < 0 {
		t.Fatal("README.md has no block marked image-test: docker-run-containerd")
	}
	s = s[i:]
	start := strings.Index(s, "```sh\n")
	end := strings.Index(s[start+6:], "```")
	if start < 0 || end < 0 {
		t.Fatal("README.md: the docker-run-containerd block is not a sh code block")
	}
	block := strings.ReplaceAll(s[start+6:start+6+end], "\\\n", " ")
	var line string
	for _, l := range strings.Split(block, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "docker run ") {
			line = l
		}
	}
	if line == "" {
		t.Fatal("README.md: no docker run line in the docker-run-containerd block")
	}
	run := runLine{env: map[string]string{}}
	f := strings.Fields(line)[2:]
	for i := 0; i < len(f); i++ {
		arg := f[i]
		next := func() string {
			i++
			if i >= len(f) {
				t.Fatalf("README.md: %s without a value", arg)
			}
			return f[i]
		}
		switch arg {
		case "-d":
		case "-v":
			parts := strings.SplitN(next(), ":", 3)
			m := runMount{source: parts[0], target: parts[1]}
			if len(parts) == 3 {
				m.opts = parts[2]
			}
			run.volumes = append(run.volumes, m)
		case "--cap-add":
			run.capAdd = append(run.capAdd, next())
		case "--cap-drop":
			run.capDrop = append(run.capDrop, next())
		case "--security-opt":
			run.securityOpt = append(run.securityOpt, next())
		case "-e":
			k, v, _ := strings.Cut(next(), "=")
			run.env[k] = v
		case "--network":
			run.network = next()
		case "--restart":
			run.restart = next()
		case "--name":
			run.name = next()
		default:
			if strings.HasPrefix(arg, "-") {
				t.Fatalf("README.md's docker run line has %s, which this test does not know: check it against the manifests and teach the test", arg)
			}
			run.image = arg
		}
	}
	if len(run.volumes) == 0 || len(run.capAdd) == 0 || run.image == "" {
		t.Fatalf("README.md's docker run line parsed to %+v", run)
	}
	return run
}

type composeFile struct {
	Name     string `yaml:"name"`
	Services map[string]struct {
		Image         string            `yaml:"image"`
		ContainerName string            `yaml:"container_name"`
		NetworkMode   string            `yaml:"network_mode"`
		Restart       string            `yaml:"restart"`
		CapDrop       []string          `yaml:"cap_drop"`
		CapAdd        []string          `yaml:"cap_add"`
		SecurityOpt   []string          `yaml:"security_opt"`
		Volumes       []string          `yaml:"volumes"`
		Environment   map[string]string `yaml:"environment"`
	} `yaml:"services"`
}

// TestComposeMirrorsREADME: deploy/compose.yml runs the agent exactly as the
// README's `docker run` line does.
func TestComposeMirrorsREADME(t *testing.T) {
	b, err := os.ReadFile("../compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var cf composeFile
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&cf); err != nil {
		t.Fatalf("compose.yml: %v", err)
	}
	svc, ok := cf.Services["host-agent"]
	if !ok || len(cf.Services) != 1 {
		t.Fatalf("compose.yml: want the one service host-agent, have %d", len(cf.Services))
	}
	run := readmeRunLine(t)
	var readmeVolumes []string
	for _, m := range run.volumes {
		v := m.source + ":" + m.target
		if m.opts != "" {
			v += ":" + m.opts
		}
		readmeVolumes = append(readmeVolumes, v)
	}
	same := func(what string, compose, readme []string) {
		if !slices.Equal(slices.Sorted(slices.Values(compose)), slices.Sorted(slices.Values(readme))) {
			t.Errorf("%s: compose.yml %v, README %v", what, compose, readme)
		}
	}
	same("volumes", svc.Volumes, readmeVolumes)
	same("cap_add", svc.CapAdd, run.capAdd)
	same("cap_drop", svc.CapDrop, run.capDrop)
	same("security_opt", svc.SecurityOpt, run.securityOpt)
	if svc.NetworkMode != run.network || svc.Restart != run.restart || svc.ContainerName != run.name {
		t.Errorf("network %q restart %q name %q; the README's: %q %q %q", svc.NetworkMode, svc.Restart, svc.ContainerName, run.network, run.restart, run.name)
	}
	if !strings.HasSuffix(svc.Image, run.image+"}") && svc.Image != run.image {
		t.Errorf("image %q, the README's %q", svc.Image, run.image)
	}
	for k, v := range run.env {
		got, ok := svc.Environment[k]
		switch {
		case !ok:
			t.Errorf("compose.yml does not set %s", k)
		case k == "AGENT_ID":
			if !strings.HasPrefix(got, "${AGENT_ID") {
				t.Errorf("AGENT_ID = %q: want it from the environment of `docker compose`", got)
			}
		case got != v:
			t.Errorf("%s = %q, the README's %q", k, got, v)
		}
	}
}
