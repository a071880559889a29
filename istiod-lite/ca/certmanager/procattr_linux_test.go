package certmanager_test

import "syscall"

// procAttr kills cert-manager with the test binary, even when it crashes.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
