#!/bin/sh
# setup-postfix.sh: install Debian's Postfix for `make bench` without
# letting it take over the system.
#
# Runs as:  root, from `make bench` (idempotent: a second run only checks).
# Does:     the benchmark compares this qmail with Postfix and drives both
#           with Postfix's smtp-source and smtp-sink, so it needs the
#           package; the Postfix it runs is a private instance (config and
#           queue under /var/tmp, bench/pfinstance.py), never the system's.
#           Before the package is unpacked:
#           - dpkg diverts /usr/sbin/sendmail, /usr/lib/sendmail,
#             /usr/bin/mailq and /usr/bin/newaliases to *.postfix, so
#             Postfix's copies land beside them and qmail's
#             /usr/sbin/sendmail symlink (qmail-install) stays in place;
#           - debconf is told "No configuration": no /etc/postfix/main.cf,
#             nothing listening on port 25;
#           - a policy-rc.d (only if the machine has none) keeps the
#             package's postinst from starting the service.
#           After: the system service is disabled and stopped.
# Refuses:  when installing postfix would remove another package (an MTA
#           Debian knows, such as exim4: they conflict).
# --remove: undoes it: purges postfix, then takes the diversions away.  A
#           file diverted aside meanwhile (exim4 installed later, which
#           removed postfix: its sendmail went to sendmail.postfix, and
#           the system had none) goes back in its place.  Run it before
#           installing another MTA on a machine make test has used.
#           Touches nothing without a diversion of this script's (a
#           Postfix that is the machine's MTA), and refuses to purge one
#           with mail in its queue or whose purge would take other
#           packages.
# Exits:    0 ready (or removed); 1 refused or failed.

set -eu

PATHS="/usr/sbin/sendmail /usr/lib/sendmail /usr/bin/mailq /usr/bin/newaliases"

say() { echo "setup-postfix: $*"; }
die() { echo "setup-postfix: fatal: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root"

installed() { dpkg-query -W -f '${Status}' postfix 2>/dev/null | grep -q 'ok installed'; }
# $1 diverted by this script: a local diversion to $1.postfix.
ours() {
    [ "$(dpkg-divert --listpackage "$1")" = LOCAL ] &&
        [ "$(dpkg-divert --truename "$1")" = "$1.postfix" ]
}

if [ "${1:-}" = --remove ]; then
    mine=
    for f in $PATHS; do
        ! ours "$f" || mine=1
    done
    if [ -z "$mine" ]; then
        # No diversion of ours: this Postfix (if any) is not the one this
        # script installed, and may be the machine's MTA.
        say "nothing of this script's to remove"
        exit 0
    fi
    if dpkg-query -W postfix >/dev/null 2>&1; then
        for q in maildrop incoming active deferred hold; do
            [ -z "$(find "/var/spool/postfix/$q" -type f -print -quit 2>/dev/null)" ] ||
                die "/var/spool/postfix/$q holds mail: this Postfix is in use; not purging it"
        done
        if apt-get -s purge postfix 2>/dev/null | grep -E '^(Remv|Purg) ' | grep -qv '^[A-Za-z]* postfix '; then
            die "purging postfix would remove other packages; do it by hand"
        fi
        say "purging postfix"
        DEBIAN_FRONTEND=noninteractive apt-get purge -y -q postfix >/dev/null ||
            die "apt-get purge postfix failed"
    fi
    for f in $PATHS; do
        ours "$f" || continue
        if [ -e "$f.postfix" ] || [ -L "$f.postfix" ]; then
            # Another package's file, put aside by the diversion: back in
            # its place, over a link to qmail's program (anything else
            # there is someone's: left, and the diversion with it).
            if [ -e "$f" ] || [ -L "$f" ]; then
                case "$(readlink "$f" 2>/dev/null)" in
                    */bin/sendmail|*/bin/qmail-qread) rm -f "$f" ;;
                    *) say "warning: $f is neither absent nor qmail's link: left, diverted"
                       continue ;;
                esac
            fi
            dpkg-divert --local --rename --remove "$f" >/dev/null
            say "removed the diversion of $f; its package's file is back"
        else
            dpkg-divert --local --no-rename --remove "$f" >/dev/null
            say "removed the diversion of $f"
        fi
    done
    exit 0
fi

if ! installed; then
    # --no-rename, not --rename: --rename would move the file that is
    # there now (qmail's symlink) to the diverted name; we want dpkg to
    # put Postfix's file aside and leave the present one alone.
    for f in $PATHS; do
        owner=$(dpkg-divert --listpackage "$f")
        if [ -z "$owner" ]; then
            dpkg-divert --local --no-rename --divert "$f.postfix" --add "$f" >/dev/null
            say "diverted $f to $f.postfix"
        elif [ "$owner" != LOCAL ]; then
            say "$f is already diverted by $owner"
        fi
    done
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    [ -n "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit)" ] ||
        apt-get update -q
    # apt would remove a conflicting MTA package without asking twice.
    if DEBIAN_FRONTEND=noninteractive apt-get install -s -y --no-install-recommends postfix |
            grep -q '^Remv '; then
        die "installing postfix would remove other packages; install it by hand"
    fi
    made_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    say "installing postfix (No configuration)"
    rc=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        postfix >/dev/null || rc=$?
    [ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d
    [ "$rc" = 0 ] || die "apt-get install postfix failed ($rc)"
fi

for f in /usr/sbin/smtp-source /usr/sbin/smtp-sink /usr/sbin/postfix /usr/sbin/postconf; do
    [ -x "$f" ] || die "$f missing"
done

# The system's Postfix stays off: not enabled at boot, not running.
if command -v systemctl >/dev/null 2>&1; then
    systemctl disable postfix.service >/dev/null 2>&1 || true
    systemctl stop postfix.service >/dev/null 2>&1 || true
fi
update-rc.d postfix disable >/dev/null 2>&1 || true
if [ -f /etc/postfix/main.cf ] && postfix status >/dev/null 2>&1; then
    say "stopping the system's Postfix"
    postfix stop >/dev/null 2>&1 || true
fi

for f in $PATHS; do
    if [ -L "$f" ] && [ "$(readlink "$f")" = ../sbin/sendmail ] &&
            [ "$(dpkg-divert --listpackage "$f")" = "" ]; then
        say "warning: $f is Postfix's (installed before this script diverted it)"
    fi
done
exit 0
