# Lists or deletes files on a duplicity target through duplicity's own backends, so every
# target scheme duplicity supports works the same. Run by snapback with an argv vector:
#   python3 -c <this> list URL
#   python3 -c <this> delete URL NAME...
# Credentials come from the environment, as for duplicity itself.
import os
import sys

from duplicity import config, log
import duplicity.backend as backend

log.setup()
backend.import_backends()
config.num_retries = int(os.environ.get("SNAPBACK_NUM_RETRIES", "3"))
endpoint = os.environ.get("SNAPBACK_S3_ENDPOINT_URL")
if endpoint:
    config.s3_endpoint_url = endpoint
# The key and known_hosts of an SSH target, as duplicity's --ssh-options would give them.
config.ssh_options = os.environ.get("SNAPBACK_SSH_OPTIONS", "")

cmd, url = sys.argv[1], sys.argv[2]
be = backend.get_backend(url)


def lftp_make_dir(be):
    """duplicity's lftp backend lists a directory that does not exist yet by creating it with
    `mkdir -p DIR/`, which sends MKD DIR and then MKD DIR/: the second fails as "exists" on
    FTP servers, and so does the first run of every new domain. Made here first with -f,
    which ignores that; a login failure still shows in the listing that follows."""
    inner = getattr(be, "backend", be)
    if type(inner).__name__ != "LFTPBackend":
        return
    from duplicity.backends.lftpbackend import cmd_quote
    try:
        inner.subprocess_popen(
            'lftp -c "source %s; mkdir -p -f %s"'
            % (cmd_quote(inner.tempname), cmd_quote(inner.remote_path))
        )
    except Exception:
        pass  # the listing that follows reports what went wrong, with duplicity's retries


if cmd == "list":
    lftp_make_dir(be)
    for name in be.list():
        print(name.decode() if isinstance(name, bytes) else name)
elif cmd == "delete":
    for name in sys.argv[3:]:
        be.delete([name.encode()])
        print(name)
else:
    sys.exit("unknown command " + cmd)
