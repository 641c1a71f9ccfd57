// Package hostinfo reads the host's facts that several parts of the agent
// need: its memory (/proc/meminfo), the free and total space of a file
// system, and its CPUs. Each is read here and nowhere else, so that the
// share accounting, the disk reserve, the self-test and GET /host agree.
//
// It imports nothing of the agent's own and may be imported by any of its
// packages.
package hostinfo
