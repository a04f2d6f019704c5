# qmail in Python: the two commands on a fresh Debian 12 machine, as root,
# are `make run` and `make test`.  Everything else here is what they use.

QMAIL_HOME ?= /var/qmail
FQDN ?=
# The interpreter the installed programs run on: a venv from Debian's
# python3, world-readable, holding the runtime dependencies.
RUNTIME ?= /usr/local/lib/qmail/venv
# The developers' venv: the package (editable) and the test tools.
DEVENV ?= .venv
SYSPYTHON ?= /usr/bin/python3
APT_PACKAGES = python3 python3-venv python3-dev gcc libc6-dev make passwd procps man-db tinycdb ucspi-tcp-ipv6 swaks libnet-ssleay-perl libio-socket-inet6-perl openssl daemontools dnsmasq-base fetchmail getmail6 libmail-dkim-perl libmail-srs-perl

PYTEST_ARGS ?=
# The whole suite takes about 8 minutes here; a hang anywhere ends it at
# this bound (CI stops at 90), and pytest prints a test's stacks after
# faulthandler_timeout (pyproject.toml) so the hang is named.  (timeout
# --foreground: pytest stays in the terminal's group, so Ctrl-C and
# --pdb work.)
TEST_TIMEOUT ?= 2700

.PHONY: all deps runtime devenv setup run stop test check clean bench soak postfix postfix-remove uninstall

all: setup

# Debian packages, installed only when one is missing.
deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(RUNTIME)/.ok: pyproject.toml | deps
	test -x $(RUNTIME)/bin/python3 || $(SYSPYTHON) -m venv $(RUNTIME)
	$(RUNTIME)/bin/pip install -q --disable-pip-version-check \
	  'dnspython>=2.3' 'idna>=3' 'pyinotify>=0.9.6' 'setproctitle>=1.3' 'argon2-cffi>=21.2' \
	  'dkimpy>=1.1'
	chmod -R a+rX $(RUNTIME)
	touch $@

runtime: $(RUNTIME)/.ok

$(DEVENV)/.ok: pyproject.toml | deps
	test -x $(DEVENV)/bin/python3 || $(SYSPYTHON) -m venv $(DEVENV)
	$(DEVENV)/bin/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

devenv: $(DEVENV)/.ok

# Create qmail's users and install (or repair) the home QMAIL_HOME.
setup: runtime devenv
	$(DEVENV)/bin/python -m qmail.install --home $(QMAIL_HOME) \
	  --python $(RUNTIME)/bin/python3 $(if $(FQDN),--fqdn $(FQDN)) \
	  $(if $(SMTP_ADDR),--smtp-addr $(SMTP_ADDR)) $(if $(SMTP_PORT),--smtp-port $(SMTP_PORT)) \
	  $(if $(POP3_PORT),--pop3-port $(POP3_PORT)) \
	  $(if $(SUBMISSION_PORT),--submission-port $(SUBMISSION_PORT)) \
	  $(if $(SMTPS_PORT),--smtps-port $(SMTPS_PORT))
	@if $(QMAIL_HOME)/bin/qmail-svscan running >/dev/null 2>&1; then \
	  echo "make: qmail is running on the code before: make stop, then make run"; fi

# Install what is missing, then run the MTA under daemontools in the
# foreground: qmail-send, qmail-smtpd on SMTP_ADDR:SMTP_PORT, their
# multilog logs in $(QMAIL_HOME)/log.  Ctrl-C (or make stop from another
# shell) stops everything cleanly: deliveries under way finish first.
# SMTP_ADDR, SMTP_PORT, POP3_PORT, SUBMISSION_PORT, SMTPS_PORT: where
# qmail-listen listens (a new home: 127.0.0.1, 25, 110, 587 and 465; a
# reinstall keeps the home's own unless given again).
# Already running: say so before anything is installed (a reinstall would
# replace the code under the running daemons).  An installed qmail-svscan
# too old to answer "running" (exit 100): svok on each service instead.
run: runtime devenv
	@if [ -x $(QMAIL_HOME)/bin/qmail-svscan ]; then \
	  $(QMAIL_HOME)/bin/qmail-svscan running >/dev/null 2>&1; rc=$$?; \
	  if [ $$rc -ne 0 ] && [ $$rc -ne 1 ]; then rc=1; \
	    for d in $(QMAIL_HOME)/service/*; do svok "$$d" 2>/dev/null && rc=0; done; fi; \
	  if [ $$rc -eq 0 ]; then \
	    echo "make: qmail is running already for $(QMAIL_HOME) (make stop first)"; exit 1; fi; fi
	$(MAKE) --no-print-directory setup
	cd / && exec $(QMAIL_HOME)/bin/qmail-svscan start

stop:
	$(QMAIL_HOME)/bin/qmail-svscan stop

# Out of service, losing no mail: refused while it runs or its queue
# holds a message; the links of /usr/sbin/sendmail go, and the home is
# renamed, not removed (qmail/uninstall.py).
# (Debian's python3 from this tree: it installs nothing on the way out.)
uninstall:
	$(SYSPYTHON) -m qmail.uninstall --home $(QMAIL_HOME)

# Postfix's smtp-source and smtp-sink, for the soak and the benchmark,
# installed so that Postfix never takes over the machine.  For `make test`
# a refusal (another MTA that Postfix would replace) only skips the soak.
postfix:
	test -x /usr/sbin/smtp-sink || sh bench/setup-postfix.sh || \
	  echo "make: no smtp-sink: the crash soak test will be skipped"

# Postfix and its diversions gone again: before another MTA is installed
# on a machine make test has used (or its sendmail would be put aside).
postfix-remove:
	sh bench/setup-postfix.sh --remove

# The tests write control files and the like as root for qmail's users to
# read: under the umask of a hardened root (027, 077) they could not, so
# the suite runs with the conventional one.  (The programs set their own.)
test: runtime devenv postfix
	umask 022 && QMAIL_RUNTIME_PYTHON=$(RUNTIME)/bin/python3 timeout --foreground -k 30 $(TEST_TIMEOUT) $(DEVENV)/bin/python -m pytest $(PYTEST_ARGS)

check: test

clean:
	rm -rf $(DEVENV) build *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +

bench: runtime devenv
	sh bench/setup-postfix.sh
	$(DEVENV)/bin/python bench/bench.py

# The long crash soak: 10,000 messages over SMTP to a Maildir and to
# Postfix's smtp-sink, 200 SIGKILLs across every qmail process, the MTA
# under daemontools (tests/integration/soak_driver.py; make test runs a
# short one).
SOAK_ARGS ?= --messages 10000 --kills 200
soak: runtime devenv postfix
	QMAIL_RUNTIME_PYTHON=$(RUNTIME)/bin/python3 $(DEVENV)/bin/python \
	  tests/integration/soak_driver.py $(SOAK_ARGS)
