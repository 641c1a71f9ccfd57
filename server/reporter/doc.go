// Package reporter keeps the central server informed about this host:
// registration (the host report), a heartbeat with every instance's state and
// the GPUs' usage, reconciliation against the instances the server expects,
// and tolerance of the server's outages. cmd/ builds a Reporter and runs it;
// server/ may serve its Collect as GET /host. It imports runtime/, gpu/ and
// runtime/events, never echo or server/.
//
// # Protocol
//
// The agent always calls; the server never has to reach the agent for this.
// Both calls are
//
//	POST {API_SERVER_URL}/api/v1/agents/{AGENT_ID}/register
//	POST {API_SERVER_URL}/api/v1/agents/{AGENT_ID}/heartbeat
//
// with the headers
//
//	Authorization: Bearer <AGENT_TOKEN>
//	Content-Type: application/json
//	User-Agent: host-agent/<version>
//
// and a JSON body (RegisterRequest, HeartbeatRequest). The server answers:
//
//   - 2xx: accepted. A register answer's body is ignored; a heartbeat answer
//     may carry a HeartbeatResponse (an empty body is the same as {}).
//   - 401, 403: the token is wrong or revoked. The agent logs an error once
//     per streak and retries every Backoff.SlowRetry (5 minutes by default).
//   - 404 to a heartbeat: the server does not know this agent (say, it lost
//     its database); the agent registers again.
//   - 408, 429, 5xx, or no answer within Options.RequestTimeout: an outage.
//     The agent retries with exponential backoff and full jitter (see
//     Backoff), keeps every instance running, and once the server answers
//     again registers afresh before its next heartbeat.
//   - any other 4xx: the request was refused; logged once as an error and
//     retried every Backoff.SlowRetry, since repeating it sooner cannot help.
//
// The agent registers on start, after any failed call, when the GPU
// inventory's fingerprint changes (a GPU appears, disappears or turns
// unhealthy), and when a heartbeat answer asks it to; heartbeats start only
// after a registration succeeded, and follow every Options.Interval.
//
// # Statelessness
//
// Every body is built from the runtime, NVML and the OS at the moment it is
// sent, so the server may take the latest one as the whole truth about the
// host, and an agent that restarts simply registers again with the same
// instances. The only memory the reporter keeps is which orphans and missing
// instances it has already announced on the event stream, so as not to repeat
// them on every heartbeat.
//
// # Reconciliation
//
// A heartbeat answer may list the instances the server expects here. An
// instance present on the host but not expected is an orphan; an expected
// one that is not present is missing. Each is published once as an
// instance.orphan or instance.missing event and listed in the next
// heartbeat. The agent terminates an orphan only when the same answer names
// it under "terminate"; it never terminates anything because the server is
// unreachable, because the agent restarted, or because an instance merely is
// an orphan.
//
// # Standalone
//
// Without a server URL, New returns a Reporter whose Run logs once that
// nothing is reported and then waits for its context; Collect still works.
package reporter
