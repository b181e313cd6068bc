#!/usr/bin/env python3
"""The two broker operations scripts/readme-commands.sh needs and no CLI here
offers: publish a request (with publisher confirms) and delete a prefix's
queues and exchanges. AMQP 0-9-1 over a plain socket, standard library only,
so CI needs nothing installed for it.

    amqp.py publish ROUTING_KEY BODY     # to the default exchange
    amqp.py delete-queue NAME...
    amqp.py delete-exchange NAME...

AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f) says where.
"""
import os
import socket
import struct
import sys
import urllib.parse

FRAME_END = b"\xce"


def shortstr(s):
    b = s.encode()
    return struct.pack("B", len(b)) + b


def longstr(b):
    return struct.pack(">I", len(b)) + b


class Link:
    def __init__(self, url):
        u = urllib.parse.urlparse(url)
        if u.scheme != "amqp":
            sys.exit("amqp.py: only amqp:// URLs")
        self.sock = socket.create_connection((u.hostname or "127.0.0.1", u.port or 5672), timeout=30)
        self.buf = b""
        user = urllib.parse.unquote(u.username or "guest")
        password = urllib.parse.unquote(u.password or "guest")
        vhost = urllib.parse.unquote(u.path[1:]) if len(u.path) > 1 else "/"
        self.sock.sendall(b"AMQP\x00\x00\x09\x01")
        self.expect(0, 10, 10)  # connection.start
        response = b"\x00" + user.encode() + b"\x00" + password.encode()
        self.method(0, 10, 11, struct.pack(">I", 0) + shortstr("PLAIN") + longstr(response) + shortstr("en_US"))
        tune = self.expect(0, 10, 30)
        channel_max, frame_max, _ = struct.unpack(">HIH", tune[:8])
        self.frame_max = frame_max or 131072
        self.method(0, 10, 31, struct.pack(">HIH", channel_max, self.frame_max, 0))
        self.method(0, 10, 40, shortstr(vhost) + shortstr("") + b"\x00")
        self.expect(0, 10, 41)
        self.channel = 0
        self.open_channel()

    def open_channel(self):
        self.channel += 1
        self.method(self.channel, 20, 10, shortstr(""))
        self.expect(self.channel, 20, 11)

    def send(self, kind, channel, payload):
        self.sock.sendall(struct.pack(">BHI", kind, channel, len(payload)) + payload + FRAME_END)

    def method(self, channel, cls, mth, args):
        self.send(1, channel, struct.pack(">HH", cls, mth) + args)

    def read_frame(self):
        while True:
            while len(self.buf) < 7:
                self.fill()
            kind, channel, size = struct.unpack(">BHI", self.buf[:7])
            while len(self.buf) < 8 + size:
                self.fill()
            payload = self.buf[7 : 7 + size]
            self.buf = self.buf[8 + size :]
            if kind != 8:  # heartbeats carry nothing
                return kind, channel, payload

    def fill(self):
        data = self.sock.recv(65536)
        if not data:
            sys.exit("amqp.py: the broker closed the connection")
        self.buf += data

    def expect(self, channel, cls, mth):
        """The next method; a channel close (404 and the like) is returned as None."""
        while True:
            kind, ch, payload = self.read_frame()
            if kind != 1:
                continue
            c, m = struct.unpack(">HH", payload[:4])
            if (c, m) == (cls, mth) and ch == channel:
                return payload[4:]
            if (c, m) == (20, 40):  # channel.close: answer it, carry on on a new channel
                self.method(ch, 20, 41, b"")
                self.open_channel()
                return None
            if (c, m) == (10, 50):
                code = struct.unpack(">H", payload[4:6])[0]
                text = payload[7 : 7 + payload[6]].decode(errors="replace")
                sys.exit(f"amqp.py: the broker closed the connection: {code} {text}")

    def publish(self, routing_key, body):
        self.method(self.channel, 85, 10, b"\x00")  # confirm.select
        self.expect(self.channel, 85, 11)
        self.method(self.channel, 60, 40, struct.pack(">H", 0) + shortstr("") + shortstr(routing_key) + b"\x00")
        # content-type and delivery-mode (persistent)
        props = struct.pack(">H", 0x8000 | 0x1000) + shortstr("application/json") + b"\x02"
        self.send(2, self.channel, struct.pack(">HHQ", 60, 0, len(body)) + props)
        step = self.frame_max - 8
        for i in range(0, len(body), step):
            self.send(3, self.channel, body[i : i + step])
        while True:
            kind, _, payload = self.read_frame()
            if kind == 1 and payload[:4] == struct.pack(">HH", 60, 80):
                return
            if kind == 1 and payload[:4] == struct.pack(">HH", 60, 120):
                sys.exit("amqp.py: the broker nacked the message")

    def delete_queue(self, name):
        self.method(self.channel, 50, 40, struct.pack(">H", 0) + shortstr(name) + b"\x00")
        self.expect(self.channel, 50, 41)

    def delete_exchange(self, name):
        self.method(self.channel, 40, 20, struct.pack(">H", 0) + shortstr(name) + b"\x00")
        self.expect(self.channel, 40, 21)

    def close(self):
        self.method(0, 10, 50, struct.pack(">H", 200) + shortstr("bye") + struct.pack(">HH", 0, 0))
        self.expect(0, 10, 51)
        self.sock.close()


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    link = Link(os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"))
    command, args = argv[1], argv[2:]
    if command == "publish" and len(args) == 2:
        link.publish(args[0], args[1].encode())
    elif command == "delete-queue":
        for name in args:
            link.delete_queue(name)
    elif command == "delete-exchange":
        for name in args:
            link.delete_exchange(name)
    else:
        sys.exit(__doc__)
    link.close()


if __name__ == "__main__":
    try:
        main(sys.argv)
    except OSError as e:
        sys.exit(f"amqp.py: {e}")
