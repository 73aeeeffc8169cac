/* The pod sandbox's init: hold the pod's namespaces, reap orphans, exit on SIGINT/SIGTERM. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }

int main(void) {
    struct sigaction a = {0}, b = {0};
    a.sa_handler = stop;
    sigaction(SIGINT, &a, NULL);
    sigaction(SIGTERM, &a, NULL);
    b.sa_handler = reap;
    b.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &b, NULL);
    for (;;) pause();
    return 0;
}
