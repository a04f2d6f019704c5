/*
 * bin/checkpassword and bin/vcheckpassword: the set-uid launcher of a
 * password checker, so that qmail-smtpd's AUTH works as qmaild.
 *
 * Installed owned by root, group nofiles (qmaild's), mode 04710: only
 * root and the nofiles users may run it, and it goes on only for root
 * (qmail-popup) and qmaild (qmail-smtpd): the other nofiles users
 * (alias, qmaill, qmailp) have no passwords to check, and should not
 * get to try them.  Others exit 111.  As bin/qmail-queue does, it starts a fixed interpreter, with
 * its own absolute path as argv[0] and / as its cwd (CPython looks for
 * pyvenv.cfg near argv[0], in the cwd for a bare name), on a fixed,
 * root-owned script in isolated mode: -I (no PYTHON* variables, no user
 * site, no script directory on sys.path), -B (no bytecode writes), and
 * -S unless the checker needs the runtime's site-packages.  Unlike it,
 * the checkpassword interface passes the caller's arguments (the
 * program to run once the password is right), environment (that
 * program's) and fds 0 to 3 (fd 3: the user and password), so those go
 * through; the real uid stays the caller's, which keeps the dynamic
 * loader's secure mode (no LD_* variables) for the interpreter too.  A
 * closed fd among 0 to 3 is opened on /dev/null first (the C library
 * already does it for 0 to 2 in a set-uid start; root's is not one), so
 * that nothing the checker opens as root takes a number the caller gave
 * a meaning; fds from 4 on are closed.  A directory among fds 0 to 2 is
 * temporary trouble, 111: the interpreter would abort on it, exit 1,
 * which says "wrong password".  A soft stack limit above 8 MB is
 * brought down to 8 MB (Linux's default): glibc gives each thread that
 * much address space, and daemontools' softlimit -m N sets both to N,
 * so argon2's four threads (vcheckpassword) never fitted, whatever N.
 * qmail-install substitutes the strings and qmaild's uid.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#define PYTHON "@PYTHON@"
#define FLAGS "@FLAGS@"
#define SCRIPT "@SCRIPT@"
#define QMAILD @QMAILD@
#define THREAD_STACK ((rlim_t) 8 << 20)

extern char **environ;

int main(int argc, char **argv)
{
  char **args;
  struct stat st;
  struct rlimit stack;
  int fd;
  int i;
  uid_t caller = getuid();

  if (caller != 0 && caller != QMAILD) _exit(111);
  for (fd = 0; fd <= 3; ++fd)
    if (fcntl(fd, F_GETFD) == -1)
      if (open("/dev/null", (fd == 0 || fd == 3) ? O_RDONLY : O_WRONLY) != fd)
        _exit(111);
  for (fd = 0; fd <= 2; ++fd)
    if (fstat(fd, &st) == -1 || S_ISDIR(st.st_mode)) _exit(111);
  if (close_range(4, ~0U, 0) == -1)
    for (fd = 4; fd < 65536; ++fd) close(fd);
  if (chdir("/") == -1) _exit(111);
  if (getrlimit(RLIMIT_STACK, &stack) == 0 && stack.rlim_cur != RLIM_INFINITY
      && stack.rlim_cur > THREAD_STACK) {
    stack.rlim_cur = THREAD_STACK;
    setrlimit(RLIMIT_STACK, &stack);  /* failing, the check may still fit */
  }
  if (argc < 1) _exit(2);
  args = calloc((size_t) argc + 4, sizeof *args);
  if (!args) _exit(111);
  args[0] = PYTHON;
  args[1] = FLAGS;
  args[2] = "-B";
  args[3] = SCRIPT;
  for (i = 1; i < argc; ++i) args[i + 3] = argv[i];
  args[argc + 3] = 0;
  execve(PYTHON, args, environ);
  _exit(111);
}
