output "alarm_topic_arn" {
  description = "SNS topic every alarm notifies."
  value       = aws_sns_topic.alarms.arn
}

output "alarm_names" {
  description = "Names of the operator's alarms."
  value = concat(
    [
      aws_cloudwatch_metric_alarm.api_5xx_rate.alarm_name,
      aws_cloudwatch_metric_alarm.api_latency_p99.alarm_name,
      aws_cloudwatch_metric_alarm.consumer_lag.alarm_name,
      aws_cloudwatch_metric_alarm.rds_cpu.alarm_name,
      aws_cloudwatch_metric_alarm.rds_connections.alarm_name,
      aws_cloudwatch_metric_alarm.s3_error_rate.alarm_name,
    ],
    [for a in aws_cloudwatch_metric_alarm.redis_memory : a.alarm_name],
  )
}
