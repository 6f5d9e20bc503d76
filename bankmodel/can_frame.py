"""A classical CAN data frame that is cheap to make and to copy: what both ends of the BMS bus send.

python-can's ``virtual`` bus (the in-process transport: the harness and the emulated BMS on one
channel) deep-copies every frame it delivers, and :class:`can.Message`'s own copy goes back
through its validating constructor. On a virtual clock a bank qualification sends ten report
frames and one keep-alive per bench second, hours of them: about a tenth of its run went into
those copies. Here the fields of a classical frame are set directly; on the bus, in a candump
log and to every listener the frame is an ordinary :class:`can.Message`.
"""

from __future__ import annotations

import can


class Frame(can.Message):
    """A classical (not FD, not remote, not error) data frame with an 11-bit or 29-bit ID."""

    __slots__ = ()

    @classmethod
    def of(cls, arbitration_id: int, data: bytes | bytearray, timestamp: float,
           is_extended_id: bool = False) -> "Frame":
        if not 0 <= len(data) <= 8:
            raise ValueError(f"CAN frame 0x{arbitration_id:X}: {len(data)} data bytes, a classical frame has 0-8")
        frame = cls.__new__(cls)
        frame.timestamp, frame.arbitration_id, frame.data = timestamp, arbitration_id, bytearray(data)
        frame.dlc, frame.channel, frame.is_extended_id, frame.is_rx = len(data), None, is_extended_id, False
        frame.is_remote_frame = frame.is_error_frame = frame.is_fd = False
        frame.bitrate_switch = frame.error_state_indicator = False
        return frame

    def __deepcopy__(self, memo: dict | None) -> "Frame":
        frame = self.of(self.arbitration_id, self.data, self.timestamp, self.is_extended_id)
        frame.channel, frame.is_rx = self.channel, self.is_rx
        return frame


__all__ = ["Frame"]
