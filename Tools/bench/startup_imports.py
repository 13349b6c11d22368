"""Import-heavy start-up: import a set of large standard library modules.

Run as a whole process; the runner times the process from fork to exit
(there is no in-process timing).  Under -X perf every code object executed
during the imports gets a trampoline and a line in the map file, which is
what this benchmark is there to show.  The optional argument is ignored.
"""

import asyncio
import decimal
import email.parser
import http.client
import json
import logging
import argparse
import dataclasses
import typing
import urllib.request
import xml.etree.ElementTree
import unittest

if __name__ == "__main__":
    # Touch a few objects so nothing is optimised away by lazy attributes.
    _ = (asyncio.Future, decimal.Decimal("1.5"), email.parser.Parser,
         http.client.HTTPConnection, json.dumps, logging.getLogger,
         argparse.ArgumentParser, dataclasses.dataclass, typing.List,
         urllib.request.Request, xml.etree.ElementTree.Element,
         unittest.TestCase)
