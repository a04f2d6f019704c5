"""qmail-install's reading of where a home's services listen (a
reinstall not told keeps it): listen_args and listening."""

import os

from qmail import install


def test_listen_args_reads_qmail_listens_address_and_port():
    smtpd = install.SMTPD_RUN % {'home': '/h', 'uid': 5, 'gid': 6, 'addr': '0', 'port': '2525'}
    pop3d = install.POP3D_RUN % {'home': '/h', 'addr': '::', 'port': '1110'}
    assert install.listen_args(smtpd) == ('0', '2525')      # past a comment naming it
    assert install.listen_args(pop3d) == ('::', '1110')     # over a continued line
    edited = smtpd.replace('/h/bin/qmail-smtpd', '/usr/bin/rblsmtpd -r zen.example /h/bin/qmail-smtpd')
    assert install.listen_args(edited) == ('0', '2525')
    assert install.listen_args('exec tcpserver -v 0 25 qmail-smtpd\n') is None
    assert install.listen_args('exec qmail-listen -Z 0 25 x\n') is None     # not its options


def test_listening_takes_the_address_from_either_script(tmp_path):
    sup = tmp_path / 'supervise'
    for name in ('qmail-smtpd', 'qmail-pop3d'):
        os.makedirs(sup / name)
    (sup / 'qmail-smtpd' / 'run').write_text('#!/bin/sh\nexec tcpserver 0 2525 x\n')
    (sup / 'qmail-pop3d' / 'run').write_text(
        install.POP3D_RUN % {'home': '/h', 'addr': '0', 'port': '1110'})
    assert install.listening(str(tmp_path)) == {
        'smtp_addr': '0', 'smtp_port': '25', 'pop3_port': '1110',
        'submission_port': '587', 'smtps_port': '465'}
    assert install.listening(str(tmp_path / 'none')) == install.LISTEN_DEFAULTS


def test_listening_reads_the_mail_clients_ports():
    """qmail-submission and qmail-smtps (SMTPS=1 before qmail-listen)."""
    for smtps, port in (('', '1587'), ('SMTPS=1 ', '1465')):
        script = install.SUBMISSION_RUN % {'home': '/h', 'uid': 5, 'gid': 6, 'addr': '::',
                                           'port': port, 'smtps': smtps, 'what': 'x', 'name': 'n'}
        assert install.listen_args(script) == ('::', port)
