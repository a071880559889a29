package kubetest

import (
	"os/exec"
	"syscall"
)

// sysProcAttr puts the child in its own process group (so stop reaches any
// children it forks) and has the kernel kill it if the test binary dies
// without calling Stop.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

func signalGroup(cmd *exec.Cmd, sig syscall.Signal) {
	if cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, sig)
}
