package backend

import (
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
)

// capSysResource is CAP_SYS_RESOURCE's bit: raising a hard limit needs it.
const capSysResource = 24

// CanRaiseRlimits reports whether this host lets containers' limits be
// raised above the defaults: a sandbox that withholds CAP_SYS_RESOURCE from
// the agent withholds it from the runtime's runc too, and every start
// asking for more would fail.
func CanRaiseRlimits() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if hex, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
			return err == nil && caps&(1<<capSysResource) != 0
		}
	}
	return false
}

// RaiseProbe keeps whether a runtime's runc can raise containers' limits:
// known at once where the agent has CAP_SYS_RESOURCE (CanRaiseRlimits),
// else asked of the runtime the first time a rental needs it, until an
// answer comes.
type RaiseProbe struct {
	mu         sync.Mutex
	known, can bool
}

// NewRaiseProbe starts from the agent's own capabilities.
func NewRaiseProbe() *RaiseProbe {
	p := &RaiseProbe{}
	if CanRaiseRlimits() {
		p.known, p.can = true, true
	}
	return p
}

// CanRaise answers from what is known, else runs probe (one at a time)
// and keeps its answer; a probe that fails answers no, this time, and
// is asked again next time. who names the runtime in the log.
func (p *RaiseProbe) CanRaise(log *slog.Logger, who string, probe func() (bool, error)) bool {
	can, _ := p.Ask(log, who, probe)
	return can
}

// Ask is CanRaise, and says whether the answer is known (false: the probe
// failed, and the answer no is a guess).
func (p *RaiseProbe) Ask(log *slog.Logger, who string, probe func() (bool, error)) (can, known bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.known {
		return p.can, true
	}
	ok, err := probe()
	if err != nil {
		log.Warn("could not tell whether the "+who+" can raise containers' limits: this GPU rental keeps the default memlock", "error", err)
		return false, false
	}
	p.known, p.can = true, ok
	if ok {
		log.Info("the " + who + " can raise containers' limits: GPU rentals get an unlimited memlock")
	} else {
		log.Warn("the " + who + " cannot raise containers' limits (no CAP_SYS_RESOURCE): GPU rentals keep the default memlock instead of unlimited, and limits above the agent's own are refused")
	}
	return ok, true
}
