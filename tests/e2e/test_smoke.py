import asyncio


def square(x):
    return x * x


def test_sync_submit_and_download(ufora):
    proxy = ufora.submit(square, 12).result(timeout=30)
    assert proxy.toLocal().result(timeout=30) == 144


async def test_async_gather_over_1000_submits(aex):
    proxies = await asyncio.wait_for(
        asyncio.gather(*(aex.submit(square, i) for i in range(1000))), 60)
    values = await asyncio.gather(*(p.toLocal() for p in proxies))
    assert values == [i * i for i in range(1000)]
