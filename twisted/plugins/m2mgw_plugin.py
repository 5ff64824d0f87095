from twisted.application.service import ServiceMaker

m2mgw = ServiceMaker("m2mgw", "m2mgw.tap", "M2M service platform gateway (GB/Z 41383-2022)", "m2mgw")  # noqa: E501
