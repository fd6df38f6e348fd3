package harness

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// Proc is one started process and its exit.
type Proc struct {
	cmd     *exec.Cmd
	started time.Time
	done    chan struct{} // closed when it has exited and been reaped
	state   *os.ProcessState
}

// StartProc starts path with args and env (added to this process's),
// writing its output to log; it is killed if the harness dies.
func StartProc(path string, args, env []string, log io.Writer) (*Proc, error) {
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = log, log
	// Should the harness die without stopping it, it dies too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Proc{cmd: cmd, started: time.Now(), done: make(chan struct{})}
	go func() {
		cmd.Wait()
		p.state = cmd.ProcessState
		close(p.done)
	}()
	return p, nil
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Exited says whether the process has exited and been reaped.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Signal sends sig unless the process has exited.
func (p *Proc) Signal(sig syscall.Signal) error {
	if p.Exited() {
		return errors.New("already exited")
	}
	return p.cmd.Process.Signal(sig)
}

// Wait waits at most d for the exit; false if it is still running.
func (p *Proc) Wait(d time.Duration) bool {
	select {
	case <-p.done:
		return true
	case <-time.After(d):
		return false
	}
}

// ExitText describes how the process ended.
func (p *Proc) ExitText() string {
	if p.state == nil {
		return "still running"
	}
	return p.state.String()
}

// Stop ends the process for good: SIGCONT (it may be stopped), SIGTERM,
// and SIGKILL after grace.
func (p *Proc) Stop(grace time.Duration) {
	if p == nil || p.Exited() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGCONT)
	p.cmd.Process.Signal(syscall.SIGTERM)
	if !p.Wait(grace) {
		p.cmd.Process.Kill()
		<-p.done
	}
}
