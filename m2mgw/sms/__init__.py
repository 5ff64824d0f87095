"""WMMP over SMS through a GSM modem (spec 10.4).

* :mod:`~m2mgw.sms.pdu`: TS 23.040 PDU codec (pure).
* :mod:`~m2mgw.sms.bearer`: WMMP splitting, MSISDN rules and reassembly (pure).
* :mod:`~m2mgw.sms.at`: sans-I/O AT command engine for PDU mode.
* :mod:`~m2mgw.sms.modem`: the Twisted adapter and the serial-port service.
"""
