/*
 * bin/qmail-queue: the setuid launcher for qmail-queue.
 *
 * Installed owned by qmailq, mode 04711.  Linux ignores the setuid bit
 * on scripts, so this and check-launcher.c are the project's only
 * compiled code: it
 * starts a fixed interpreter on a fixed, root-owned script in isolated
 * mode (-I: no PYTHON* variables, no user site, no script directory on
 * sys.path; -S: no site-packages; -B: no bytecode writes) with an empty
 * environment.  The caller passes nothing but fds 0 and 1 and its real
 * uid, which qmail-queue records.  Every other descriptor is closed, so
 * a file qmail-queue opens can never take the number of one the caller
 * expects to be its stderr.  The interpreter's argv[0] is its own
 * absolute path, and the cwd is /: CPython finds its prefix from
 * argv[0], and from a name with no directory it looks in the cwd for
 * pyvenv.cfg (and python3X._pth), which would give the caller's files
 * the stdlib's place (its encodings package runs at every start).
 * qmail-install substitutes the two paths.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#define PYTHON "@PYTHON@"
#define SCRIPT "@QMAIL@/lib/qmail-queue.py"

int main(void)
{
  static char *const args[] = { PYTHON, "-I", "-S", "-B", SCRIPT, 0 };
  static char *const env[] = { 0 };
  struct stat st;
  int fd;

  /* No message or envelope to read: a read error, 54.  (A directory
     would make the interpreter abort, exit 1, before qmail-queue runs.) */
  if (fstat(0, &st) == -1 || S_ISDIR(st.st_mode)) _exit(54);
  if (fstat(1, &st) == -1 || S_ISDIR(st.st_mode)) _exit(54);
  fd = open("/dev/null", O_WRONLY);
  if (fd == -1) _exit(81);
  if (fd != 2) {
    if (dup2(fd, 2) == -1) _exit(81);
    close(fd);
  }
  if (close_range(3, ~0U, 0) == -1)
    for (fd = 3; fd < 65536; ++fd) close(fd);
  if (chdir("/") == -1) _exit(81);
  execve(PYTHON, args, env);
  _exit(81);
}
