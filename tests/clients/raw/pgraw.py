"""A minimal PostgreSQL protocol client (stdlib only) for tests that need messages psql
cannot send: extended-protocol Parse/Bind/Execute, fast-path FunctionCall, raw options.

usage: pgraw.py HOST PORT USER DATABASE SCRIPT_JSON
SCRIPT_JSON is a list of steps: ["query", sql] | ["extended", sql] | ["extended_binary", sql]
| ["fastpath", oid]. With PGRAW_DUMP=FILE every byte received is also written to FILE.
Prints one JSON line per step: the messages received up to ReadyForQuery, as
{"type": "E", "C": sqlstate, "M": message} / {"type": "D", "values": [...]} / {"type": "Z", "status": "I"} ...
"""
import json
import os
import socket
import struct
import sys


def msg(tag, body=b""):
    return tag + struct.pack("!i", len(body) + 4) + body


def cstr(s):
    return s.encode() + b"\0"


class Conn:
    def __init__(self, host, port, user, database):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.s = socket.socket(fam, socket.SOCK_STREAM)
        self.s.connect((host, port))
        self.buf = b""
        dump = os.environ.get("PGRAW_DUMP")
        self.dump = open(dump, "ab") if dump else None
        body = struct.pack("!i", 196608) + cstr("user") + cstr(user) + cstr("database") + cstr(database) + b"\0"
        self.s.sendall(struct.pack("!i", len(body) + 4) + body)
        self.until_ready()

    def read(self):
        while len(self.buf) < 5 or len(self.buf) < 1 + struct.unpack("!i", self.buf[1:5])[0]:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError("server closed the connection")
            if self.dump:
                self.dump.write(chunk)
                self.dump.flush()
            self.buf += chunk
        n = struct.unpack("!i", self.buf[1:5])[0]
        tag, body, self.buf = self.buf[:1], self.buf[5 : 1 + n], self.buf[1 + n :]
        return tag, body

    def until_ready(self):
        out = []
        while True:
            tag, body = self.read()
            if tag in (b"E", b"N"):
                fields = {}
                for part in body.split(b"\0"):
                    if part:
                        fields[chr(part[0])] = part[1:].decode()
                out.append({"type": tag.decode(), **fields})
            elif tag == b"D":
                n = struct.unpack("!h", body[:2])[0]
                vals, i = [], 2
                for _ in range(n):
                    ln = struct.unpack("!i", body[i : i + 4])[0]
                    i += 4
                    if ln < 0:
                        vals.append(None)
                    else:
                        raw = body[i : i + ln]
                        try:
                            vals.append(raw.decode())
                        except UnicodeDecodeError:
                            vals.append("hex:" + raw.hex())
                        i += ln
                out.append({"type": "D", "values": vals})
            elif tag == b"Z":
                out.append({"type": "Z", "status": body.decode()})
                return out
            elif tag == b"R" and struct.unpack("!i", body[:4])[0] != 0:
                raise RuntimeError("this test client only does trust authentication")
            else:
                out.append({"type": tag.decode()})

    def query(self, sql):
        self.s.sendall(msg(b"Q", cstr(sql)))
        return self.until_ready()

    def extended(self, sql):
        parse = msg(b"P", cstr("") + cstr(sql) + struct.pack("!h", 0))
        bind = msg(b"B", cstr("") + cstr("") + struct.pack("!hhh", 0, 0, 0))
        execute = msg(b"E", cstr("") + struct.pack("!i", 0))
        self.s.sendall(parse + bind + msg(b"D", b"P" + cstr("")) + execute + msg(b"S"))
        return self.until_ready()

    def extended_binary(self, sql):
        parse = msg(b"P", cstr("") + cstr(sql) + struct.pack("!h", 0))
        bind = msg(b"B", cstr("") + cstr("") + struct.pack("!hhhh", 0, 0, 1, 1))
        execute = msg(b"E", cstr("") + struct.pack("!i", 0))
        # No Describe: the interceptor must know the columns from the earlier Parse alone.
        describe_stmt = msg(b"D", b"S" + cstr(""))
        self.s.sendall(parse + describe_stmt + msg(b"S"))
        out = self.until_ready()
        self.s.sendall(bind + execute + msg(b"S"))
        return out + self.until_ready()

    def fastpath(self, oid):
        body = struct.pack("!Ihhih", oid, 0, 1, -1, 0)
        self.s.sendall(msg(b"F", body))
        return self.until_ready()


def main():
    host, port, user, database, script = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    c = Conn(host, port, user, database)
    for step in json.loads(script):
        kind, arg = step
        print(json.dumps(getattr(c, kind)(arg)), flush=True)
    c.s.sendall(msg(b"X"))


if __name__ == "__main__":
    main()
