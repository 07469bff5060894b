"""`leadflow console`: server-rendered pages for revenue teams over the workers' API.

Lead pages and search, team queues with an acknowledge button, and the funnel KPIs as
charts. The pages are plain HTML with inline SVG, so nothing is built or fetched at install.
"""
