# Run once in an IPython kernel whose sandbox has no network (Middleman passes it as an
# `exec_lines` entry; see middleman/src/kernel/network.rs). Without it, `%pip install` retries
# for ten seconds and then suggests restarting the kernel, and `requests.get` fails with a
# resolver error: people cannot tell that the plan, not their code, is the cause. With it, both
# fail at once and say so, with what the plan allows (NBPLAT_PLAN_NOTE).
#
# Nothing here is a security boundary (the sandbox is): code can undo all of it. It only turns
# the network's absence into a plain message. Loopback and unix sockets are left to the sandbox.
def _nbplat_no_network():
    import errno
    import ipaddress
    import os
    import shlex
    import socket

    note = os.environ.get("NBPLAT_PLAN_NOTE", "").strip()
    base = "This notebook has no network: its plan does not allow the kernel to reach the internet."
    message = base + (" " + note if note else "")

    class NoNetworkError(ConnectionRefusedError):
        """The plan has no network."""

    NoNetworkError.__module__ = "nbplat"

    def local(host):
        if host is None:
            return True
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        host = str(host).strip("[]").split("%")[0]
        if host in ("", "localhost", "localhost.localdomain", "ip6-localhost"):
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def refused(what):
        return NoNetworkError(errno.ENETUNREACH, f"{message} ({what})")

    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if not local(host):
            raise refused(f"looking up {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo

    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def remote(sock, address):
        return sock.family in (socket.AF_INET, socket.AF_INET6) and not local(address[0])

    def connect(self, address):
        if remote(self, address):
            raise refused(f"connecting to {address[0]}")
        return real_connect(self, address)

    def connect_ex(self, address):
        if remote(self, address):
            return errno.ENETUNREACH
        return real_connect_ex(self, address)

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex

    ip = get_ipython()  # noqa: F821 (IPython's builtin in a kernel)
    if ip is None:
        return

    installers = {"pip", "pip3", "conda", "mamba", "micromamba", "uv"}
    downloads = {"install", "download", "add", "sync", "wheel"}

    def needs_network(words):
        """A package manager asked to download: not when every target is a local file."""
        words = [w for w in words if w]
        while words and (
            os.path.basename(words[0]).startswith("python") or words[0] in ("-m", "sudo")
        ):
            words = words[1:]
        if not words or os.path.basename(words[0]) not in installers:
            return False
        rest = words[1:]
        if words[0] == "uv" and rest[:1] == ["pip"]:
            rest = rest[1:]
        if not rest or rest[0] not in downloads:
            return False
        targets = [w for w in rest[1:] if not w.startswith("-")]
        return any(not os.path.exists(os.path.expanduser(t)) for t in targets) or not targets

    def check(command):
        try:
            words = shlex.split(command)
        except ValueError:
            return
        for part in " ".join(words).replace("&&", ";").replace("||", ";").split(";"):
            if needs_network(part.split()):
                raise refused(
                    "package managers cannot download here; `%pip list` shows what is "
                    "installed, and a wheel uploaded to the workspace installs with "
                    "`%pip install ./file.whl`"
                )

    for name in ("pip", "conda", "mamba", "uv"):
        magic = ip.find_line_magic(name)

        def guarded(line, _magic=magic, _name=name):
            check(f"{_name} {line}")
            if _magic is None:
                raise refused(f"{_name} is not available")
            return _magic(line)

        ip.register_magic_function(guarded, "line", name)

    real_system = ip.system
    real_getoutput = ip.getoutput

    def system(cmd, *args, **kwargs):
        check(cmd)
        return real_system(cmd, *args, **kwargs)

    def getoutput(cmd, *args, **kwargs):
        check(cmd)
        return real_getoutput(cmd, *args, **kwargs)

    ip.system = system
    ip.getoutput = getoutput

    # `import x` of a package the environment lacks: say that it cannot be installed here.
    def missing_module(shell, etype, value, tb, tb_offset=None):
        name = (getattr(value, "name", None) or "").split(".")[0]
        if name and not getattr(value, "_nbplat_said", False):
            value._nbplat_said = True
            value.msg = (
                f"{value.msg}. It is not installed, and this notebook has no network to "
                "install it: its plan does not allow the kernel to reach the internet."
                + (" " + note if note else "")
                + " `%pip list` shows what is installed."
            )
            value.args = (value.msg,)
        return shell.showtraceback((etype, value, tb), tb_offset=tb_offset)

    ip.set_custom_exc((ModuleNotFoundError,), missing_module)


_nbplat_no_network()
del _nbplat_no_network
