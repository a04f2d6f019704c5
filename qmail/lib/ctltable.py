"""Every control file: its kind, default, and the words qmail-showctl uses.

One table, read by qmail-showctl and checked against control/README by
the tests, so the documentation cannot drift from the code.  Entries:
(name, kind, default, flagme, pre, post, readers).  kind is 'int', 'str'
or 'lst'; for 'str' with flagme the default is control/me when that
exists; for 'lst' the default is the sentence showctl prints.
"""

CONTROLS = (
    ('badmailfrom', 'lst', 'Any MAIL FROM is allowed.', False,
     '', ' not accepted in MAIL FROM.', 'qmail-smtpd'),
    ('bouncefrom', 'str', 'MAILER-DAEMON', False,
     'Bounce user name is ', '', 'qmail-send'),
    ('bouncemaxbytes', 'int', '0', False,
     'Bounces quote at most (0: all) ', ' bytes of the message', 'qmail-send'),
    ('bouncehost', 'str', 'bouncehost', True,
     'Bounce host name is ', '', 'qmail-send'),
    ('concurrencylocal', 'int', '10', False,
     'Local concurrency is ', '', 'qmail-send'),
    ('concurrencyremote', 'int', '20', False,
     'Remote concurrency is ', '', 'qmail-send'),
    ('databytes', 'int', '0', False,
     'SMTP DATA limit is ', ' bytes', 'qmail-smtpd'),
    ('defaultdomain', 'str', 'defaultdomain', True,
     'Default domain name is ', '', 'qmail-inject'),
    ('defaulthost', 'str', 'defaulthost', True,
     'Default host name is ', '', 'qmail-inject'),
    ('doublebouncehost', 'str', 'doublebouncehost', True,
     '2B recipient host: ', '', 'qmail-send'),
    ('doublebounceto', 'str', 'postmaster', False,
     '2B recipient user: ', '', 'qmail-send'),
    ('envnoathost', 'str', 'envnoathost', True,
     'Presumed domain name is ', '', 'qmail-send'),
    ('helohost', 'str', 'helohost', True,
     'SMTP client HELO host name is ', '', 'qmail-remote'),
    ('idhost', 'str', 'idhost', True,
     'Message-ID host name is ', '', 'qmail-inject'),
    ('localiphost', 'str', 'localiphost', True,
     'Local IP address becomes ', '', 'qmail-smtpd'),
    ('locals', 'lst', 'Messages for me are delivered locally.', False,
     'Messages for ', ' are delivered locally.', 'qmail-send'),
    ('me', 'str', 'undefined! Uh-oh', False,
     'My name is ', '', 'every program'),
    ('percenthack', 'lst', 'The percent hack is not allowed.', False,
     'The percent hack is allowed for user%host@', '.', 'qmail-send'),
    ('plusdomain', 'str', 'plusdomain', True,
     'Plus domain name is ', '', 'qmail-inject'),
    ('qmqpservers', 'lst', 'No QMQP servers.', False,
     'QMQP server: ', '.', 'qmail-qmqpc'),
    ('queuelifetime', 'int', '604800', False,
     'Message lifetime in the queue is ', ' seconds', 'qmail-send'),
    ('rcpthosts', 'lst', 'SMTP clients may send messages to any recipient.',
     False, 'SMTP clients may send messages to recipients at ', '.',
     'qmail-smtpd'),
    ('morercpthosts', 'lst', 'No effect.', False,
     'SMTP clients may send messages to recipients at ', '.',
     'qmail-newmrh, qmail-smtpd'),
    ('smtpgreeting', 'str', 'smtpgreeting', True,
     'SMTP greeting: 220 ', '', 'qmail-smtpd'),
    ('smtproutes', 'lst', 'No artificial SMTP routes.', False,
     'SMTP route: ', '', 'qmail-remote'),
    ('timeoutconnect', 'int', '60', False,
     'SMTP client connection timeout is ', ' seconds', 'qmail-remote'),
    ('timeoutremote', 'int', '1200', False,
     'SMTP client data timeout is ', ' seconds', 'qmail-remote'),
    ('timeoutsmtpd', 'int', '1200', False,
     'SMTP server data timeout is ', ' seconds', 'qmail-smtpd'),
    ('virtualdomains', 'lst', 'No virtual domains.', False,
     'Virtual domain: ', '', 'qmail-send'),
)

# Files in control/ that showctl knows but does not print as a control.
KNOWN_FILES = ('morercpthosts.cdb',)
