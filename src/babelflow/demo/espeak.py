"""A minimal ctypes binding of espeak-ng's C API that returns audio *and* phoneme timings.

The CLI cannot report timings and the PyPI wrappers only shell out to it, so we call
``libespeak-ng.so.1`` directly (see shared/reference/demo-corpus.md). Pitfalls kept here:
espeak may be initialised only once per process (Terminate + Initialize hangs), and its
output depends on the previous calls in the process, so callers run a fixed sequence of
requests in a fresh process for reproducibility.
"""

from __future__ import annotations

import ctypes as C
import ctypes.util

import numpy as np

from ..errors import BabelflowError

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS = 0x0001
_INIT_DONT_EXIT = 0x8000
_EVENT_PHONEME = 7
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
RATE, VOLUME, PITCH, RANGE, PUNCTUATION, CAPITALS, WORDGAP = 1, 2, 3, 4, 5, 6, 7


class _EventId(C.Union):
    _fields_ = [("number", C.c_int), ("name", C.c_char_p), ("string", C.c_char * 8)]


class _Event(C.Structure):
    _fields_ = [
        ("type", C.c_int),
        ("unique_identifier", C.c_uint),
        ("text_position", C.c_int),
        ("length", C.c_int),
        ("audio_position", C.c_int),
        ("sample", C.c_int),
        ("user_data", C.c_void_p),
        ("id", _EventId),
    ]


_Callback = C.CFUNCTYPE(C.c_int, C.POINTER(C.c_short), C.c_int, C.POINTER(_Event))


class Espeak:
    """One initialised espeak-ng engine (one per process)."""

    _instance: Espeak | None = None

    def __init__(self) -> None:
        name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            self.lib = C.CDLL(name)
        except OSError as e:
            raise BabelflowError(
                f"cannot load the espeak-ng library ({name}): {e}. Install it with `apt-get install espeak-ng`"
            ) from None
        self.sample_rate = self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INIT_PHONEME_EVENTS | _INIT_DONT_EXIT
        )
        if self.sample_rate <= 0:
            raise BabelflowError("espeak_Initialize failed (is espeak-ng-data installed?)")
        self._chunks: list[np.ndarray] = []
        self._phones: list[tuple[str, int]] = []
        self._cb = _Callback(self._on_audio)  # keep a reference: ctypes does not
        self.lib.espeak_SetSynthCallback(self._cb)
        self.lib.espeak_SetVoiceByName.argtypes = [C.c_char_p]
        self.lib.espeak_Synth.argtypes = [
            C.c_void_p, C.c_size_t, C.c_uint, C.c_int, C.c_uint, C.c_uint, C.c_void_p, C.c_void_p,
        ]

    @classmethod
    def get(cls) -> Espeak:
        """The process-wide engine (espeak cannot be re-initialised in a process)."""
        if cls._instance is None:
            cls._instance = Espeak()
        return cls._instance

    def _on_audio(self, wav, n, events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
        i = 0
        while events[i].type != 0:
            ev = events[i]
            if ev.type == _EVENT_PHONEME:
                name = bytes(ev.id.string).split(b"\0")[0].decode("utf-8", "replace")
                self._phones.append((name, ev.sample))
            i += 1
        return 0

    def synth(self, text: str, voice: str, params: dict[int, int]) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
        """Synthesise ``text``; return int16 audio and (phone, start, end) sample spans.

        Spans are in samples at ``self.sample_rate``; zero-length events are dropped and
        the last phone runs to the end of the buffer, so spans tile the audio.
        """
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise BabelflowError(f"espeak-ng has no voice '{voice}' (see `espeak-ng --voices`)")
        for key, value in params.items():
            self.lib.espeak_SetParameter(key, int(value), 0)
        self._chunks, self._phones = [], []
        data = text.encode("utf-8") + b"\0"
        self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        spans = []
        events = self._phones
        for k, (name, start) in enumerate(events):
            end = events[k + 1][1] if k + 1 < len(events) else len(audio)
            start, end = min(start, len(audio)), min(end, len(audio))
            if end > start and name:
                spans.append((name, start, end))
        return audio, spans
