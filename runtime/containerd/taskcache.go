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
type taskCache struct {
	mu    sync.Mutex
	live  bool
	procs map[string]*task.Process
}

// reset replaces the state with a full listing and makes the cache live.
func (c *taskCache) reset(procs []*task.Process) {
	m := make(map[string]*task.Process, len(procs))
	for _, p := range procs {
		m[taskContainerID(p)] = p
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.procs, c.live = m, true
}

// drop makes the cache stale: the event stream ended.
func (c *taskCache) drop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.procs, c.live = nil, false
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
