"""Manual commits of one track, kept by the resilience layer until a final answers them.

A commit (``POST /calls/{sid}/commit``: a push-to-talk release, an agent's "next") closes the current
segment at a byte position of the track's audio. The position is what keeps it right across a
reconnect: the commit goes to the recognizer right after the audio before it, on the connection that
carries that audio; if the connection drops before a final covers the position, the next connection's
replay reaches it again and the commit is sent again there (once per connection), and the finals it
produces twice are told apart by audio time, so the text is stored once.
"""

from __future__ import annotations

#: Pending commits per track at most; more (a client committing every frame) replace the newest.
MAX_PENDING = 64


class CommitMarks:
    """Byte positions of commits not yet covered by a final, in increasing order."""

    __slots__ = ("pending", "sent_to")

    def __init__(self) -> None:
        self.pending: list[int] = []
        #: The highest position committed on the current connection.
        self.sent_to = 0

    def add(self, mark: int, covered: int) -> None:
        """A commit at ``mark``; nothing to do when finals already cover it or it is already pending."""
        if mark <= covered or (self.pending and self.pending[-1] >= mark):
            return
        if len(self.pending) >= MAX_PENDING:
            self.pending.pop()
        self.pending.append(mark)

    def chunk(self, sent: int, n: int) -> int:
        """At most ``n`` bytes from ``sent`` on, not running past the next pending commit."""
        for mark in self.pending:
            if mark > sent:
                return min(n, mark - sent)
        return n

    def due(self, sent: int) -> int:
        """How many commits to send now that the connection has been sent ``sent`` bytes."""
        count = 0
        for mark in self.pending:
            if self.sent_to < mark <= sent:
                self.sent_to = mark
                count += 1
        return count

    def covered(self, upto: int) -> None:
        """Finals cover the audio up to byte ``upto``: the commits there are answered."""
        if self.pending:
            self.pending = [m for m in self.pending if m > upto]

    def restart(self, start: int) -> None:
        """A new connection whose audio starts at byte ``start`` (earlier commits are covered or lost)."""
        self.sent_to = start
        self.covered(start)


__all__ = ["MAX_PENDING", "CommitMarks"]
