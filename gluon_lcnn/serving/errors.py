"""The error a request's input causes: an HTTP status and a message for that request only."""
import json

__all__ = ['RequestError', 'one_line']


class RequestError(Exception):
    """A problem with one request's input; ``status`` is the HTTP code to answer with."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = int(status)
        self.message = message

    def to_json(self):
        return json.dumps({'error': self.message, 'code': self.status}, separators=(',', ':'))


def one_line(err):
    """The last line of an exception's message (OpenCV's and Pillow's span several)."""
    text = str(err).strip().splitlines()
    return text[-1].strip() if text else type(err).__name__
