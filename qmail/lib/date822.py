"""Dates in qmail's RFC 822 form: "30 Jul 1996 11:54:54 -0000" (GMT)."""

import time

MONTHS = (b'Jan', b'Feb', b'Mar', b'Apr', b'May', b'Jun',
          b'Jul', b'Aug', b'Sep', b'Oct', b'Nov', b'Dec')


def date822(t: float) -> bytes:
    """The date, without a trailing newline, as qmail's date822fmt writes it."""
    tm = time.gmtime(int(t))
    return b'%d %s %d %02d:%02d:%02d -0000' % (
        tm.tm_mday, MONTHS[tm.tm_mon - 1], tm.tm_year,
        tm.tm_hour, tm.tm_min, tm.tm_sec)
