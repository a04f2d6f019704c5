/*
 * bin/qmail-queue: the setuid launcher for qmail-queue.
 *
 * Installed owned by qmailq, mode 04711.  Linux ignores the setuid bit
 * on scripts, so this is the only compiled code in the project: it
 * starts a fixed interpreter on a fixed, root-owned script in isolated
 * mode (-I: no PYTHON* variables, no user site, no script directory on
 * sys.path; -S: no site-packages; -B: no bytecode writes) with an empty
 * environment.  The caller passes nothing but fds 0 and 1 and its real
 * uid, which qmail-queue records.  Every other descriptor is closed, so
 * a file qmail-queue opens can never take the number of one the caller
 * expects to be its stderr.  qmail-install substitutes the two paths.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#define PYTHON "@PYTHON@"
#define SCRIPT "@QMAIL@/lib/qmail-queue.py"

int main(void)
{
  static char *const args[] = { "qmail-queue", "-I", "-S", "-B", SCRIPT, 0 };
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
  execve(PYTHON, args, env);
  _exit(81);
}
