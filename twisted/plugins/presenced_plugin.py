"""``twistd presenced``: the presenced server as a twistd plugin."""

from presenced.tap import ServiceMaker

serviceMaker = ServiceMaker()
