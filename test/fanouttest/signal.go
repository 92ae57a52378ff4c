package fanouttest

import "syscall"

// Pause stops the process with SIGSTOP, as a long GC pause, a VM migration
// or a network partition would: alive, silent, holding its connections.
func (s *Server) Pause() error { return s.cmd.Process.Signal(syscall.SIGSTOP) }

// Resume continues a paused process with SIGCONT.
func (s *Server) Resume() error { return s.cmd.Process.Signal(syscall.SIGCONT) }
