package containerd

import (
	"sync"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/api/types/task"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// taskCache is the state of the namespace's tasks as containerd's event
// stream tells it, so that List does not ask containerd for every task: it
// answers ListTasks by calling each task's shim in turn, which with 200
// rentals took about 200 ms of containerd's time per list.
//
// The watcher fills it from a ListTasks each time it (re)subscribes and
// keeps it up to date from the task events; it is live only while the
// subscription is, and List asks containerd whenever it is not. Events that
// were queued before the snapshot are applied on top of it, so an update
// never moves a task back: for one process (one pid) the state only goes
// forward, created, running or paused, stopped, deleted.
//
// Events can still be missed (an exit before containerd has registered the
// subscription, an event the shim gave up publishing), so the watcher also
// corrects the cache from a fresh listing now and then (correct).
type taskCache struct {
	mu    sync.Mutex
	live  bool
	procs map[string]*task.Process
	// seq counts the changes; changed holds the seq of each container's
	// last change (a removal included), so that a correction keeps what
	// changed while its listing was taken.
	seq     uint64
	changed map[string]uint64
}

// reset replaces the state with a full listing and makes the cache live.
func (c *taskCache) reset(procs []*task.Process) {
	m := make(map[string]*task.Process, len(procs))
	for _, p := range procs {
		m[taskContainerID(p)] = p
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.procs, c.live, c.changed = m, true, nil
}

// drop makes the cache stale: the event stream ended.
func (c *taskCache) drop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.procs, c.live, c.changed = nil, false, nil
}

// mark returns the change count, to be passed to correct with a listing
// taken after it.
func (c *taskCache) mark() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seq
}

// correct brings a live cache in line with a full listing of the tasks
// taken after mark returned since, and returns the containers whose entry
// it changed. The listing wins over what the cache had before since: the
// caller applies no event while it lists, so every event applied before
// is older than the listing, and those still queued are applied after the
// correction as they are after a reset. What changed after since (the
// start of a task, recorded as it happens) is kept: the listing may be
// older.
func (c *taskCache) correct(procs []*task.Process, since uint64) []string {
	listed := make(map[string]*task.Process, len(procs))
	for _, p := range procs {
		listed[taskContainerID(p)] = p
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.live {
		return nil
	}
	var fixed []string
	for id, p := range listed {
		if c.changed[id] > since {
			continue
		}
		if old := c.procs[id]; old == nil || !sameProc(old, p) {
			c.procs[id] = p
			fixed = append(fixed, id)
		}
	}
	for id := range c.procs {
		if listed[id] == nil && c.changed[id] <= since {
			delete(c.procs, id)
			fixed = append(fixed, id)
		}
	}
	for id, seq := range c.changed {
		if seq <= since {
			delete(c.changed, id)
		}
	}
	return fixed
}

// sameProc says whether two entries tell the same state.
func sameProc(a, b *task.Process) bool {
	return a.Pid == b.Pid && a.Status == b.Status && a.ExitStatus == b.ExitStatus
}

// touch records a change of container id's entry; c.mu is held.
func (c *taskCache) touch(id string) {
	c.seq++
	if c.changed == nil {
		c.changed = map[string]uint64{}
	}
	c.changed[id] = c.seq
}

// snapshot returns a copy of the tasks by container ID, or false when the
// cache is not live.
func (c *taskCache) snapshot() (map[string]*task.Process, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.live {
		return nil, false
	}
	m := make(map[string]*task.Process, len(c.procs))
	for id, p := range c.procs {
		m[id] = p // entries are never changed once stored
	}
	return m, true
}

// rank orders a process's states; a state never follows a higher one.
func rank(s task.Status) int {
	switch s {
	case task.Status_CREATED:
		return 1
	case task.Status_STOPPED:
		return 3
	default: // running, pausing, paused
		return 2
	}
}

// set records that container id's task (process pid) is in state s.
func (c *taskCache) set(id string, pid uint32, s task.Status, exit uint32, at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.live {
		return
	}
	old := c.procs[id]
	if old != nil {
		if old.Pid == pid && rank(old.Status) > rank(s) {
			return // a late event about a state already passed
		}
		if old.Pid != pid && s != task.Status_CREATED && s != task.Status_RUNNING {
			return // about a process that is not the current one
		}
	} else if s == task.Status_STOPPED {
		return // its deletion was seen already
	}
	c.procs[id] = newProc(id, pid, s, exit, at)
	c.touch(id)
}

func newProc(id string, pid uint32, s task.Status, exit uint32, at time.Time) *task.Process {
	p := &task.Process{ID: id, ContainerID: id, Pid: pid, Status: s, ExitStatus: exit}
	if !at.IsZero() {
		p.ExitedAt = timestamppb.New(at)
	}
	return p
}

// remove records that container id's task (process pid; 0: whichever) was
// deleted.
func (c *taskCache) remove(id string, pid uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.procs[id]; old != nil && (pid == 0 || old.Pid == pid) {
		delete(c.procs, id)
		c.touch(id)
	}
}

// pause records a pause or a resume of container id's task.
func (c *taskCache) pause(id string, paused bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.procs[id]
	if old == nil || rank(old.Status) != 2 {
		return
	}
	s := task.Status_RUNNING
	if paused {
		s = task.Status_PAUSED
	}
	c.procs[id] = newProc(id, old.Pid, s, 0, time.Time{})
	c.touch(id)
}

// apply updates the cache from one containerd task event; it reports
// whether the event was a task event.
func (c *taskCache) apply(ev any) bool {
	switch e := ev.(type) {
	case *apievents.TaskCreate:
		c.set(e.ContainerID, e.Pid, task.Status_CREATED, 0, time.Time{})
	case *apievents.TaskStart:
		c.set(e.ContainerID, e.Pid, task.Status_RUNNING, 0, time.Time{})
	case *apievents.TaskExit:
		if e.ID != "" && e.ID != e.ContainerID {
			return true // an exec'd process, not the task
		}
		var at time.Time
		if e.ExitedAt != nil {
			at = e.ExitedAt.AsTime()
		}
		c.set(e.ContainerID, e.Pid, task.Status_STOPPED, e.ExitStatus, at)
	case *apievents.TaskDelete:
		if e.ID != "" && e.ID != e.ContainerID {
			return true
		}
		c.remove(e.ContainerID, e.Pid)
	case *apievents.TaskPaused:
		c.pause(e.ContainerID, true)
	case *apievents.TaskResumed:
		c.pause(e.ContainerID, false)
	default:
		return false
	}
	return true
}
