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

cmd, url = sys.argv[1], sys.argv[2]
be = backend.get_backend(url)
if cmd == "list":
    for name in be.list():
        print(name.decode() if isinstance(name, bytes) else name)
elif cmd == "delete":
    for name in sys.argv[3:]:
        be.delete([name.encode()])
        print(name)
else:
    sys.exit("unknown command " + cmd)
