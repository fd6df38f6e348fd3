/* pause: the sandbox ("pause") process of every pod on the node that
 * internal/kubenode starts. It holds the pod's namespaces and does nothing:
 * it sleeps until SIGTERM or SIGINT, then exits 0, and reaps children it
 * inherits as PID 1 of the pod. Written for batchgate (not the Kubernetes
 * one); built with `gcc -static` by kubenode and packed as the one-layer
 * image registry.k8s.io/pause:3.10, since no registry is reachable. */
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_stop(int sig) { (void)sig; stop = 1; }

static void on_child(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction sa = {0};
  sa.sa_handler = on_stop;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  sa.sa_handler = on_child;
  sa.sa_flags = SA_NOCLDSTOP;
  sigaction(SIGCHLD, &sa, NULL);
  while (!stop)
    pause();
  return 0;
}
