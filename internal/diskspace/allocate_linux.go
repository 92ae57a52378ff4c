package diskspace

import (
	"os"
	"syscall"
)

// allocate reserves size bytes for f without writing them, where the
// filesystem can (fallocate); otherwise it writes zeros.
func allocate(f *os.File, size int64) error {
	if err := syscall.Fallocate(int(f.Fd()), 0, 0, size); err == nil || err == syscall.ENOSPC {
		return err
	}
	return writeZeros(f, size)
}
